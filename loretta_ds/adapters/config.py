"""LorettaConfig: every knob of the two LoRETTA methods, validated once, round-tripping JSON."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

METHODS = ("rep", "adp")
INITS = ("zero", "reference")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")

ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_PROJECTIONS = ["gate_proj", "up_proj", "down_proj"]
TARGET_PRESETS = {
    "attn": ATTENTION_PROJECTIONS,
    "mlp": MLP_PROJECTIONS,
    "all": ATTENTION_PROJECTIONS + MLP_PROJECTIONS,
}
# The reference's targets: rep adapts q and v; adp puts adapters around the MLP projections.
DEFAULT_TARGETS = {"rep": ["q_proj", "v_proj"], "adp": MLP_PROJECTIONS}


def resolve_targets(target_modules: str | list[str] | None, method: str) -> list[str]:
    """Expand a preset name, a comma-separated string or a list into a list of module names."""
    if target_modules is None:
        return list(DEFAULT_TARGETS[method])
    if isinstance(target_modules, str):
        if target_modules in TARGET_PRESETS:
            return list(TARGET_PRESETS[target_modules])
        target_modules = [t.strip() for t in target_modules.split(",")]
    names: list[str] = []
    for name in target_modules:
        expanded = TARGET_PRESETS.get(name, [name])
        names.extend(n for n in expanded if n not in names)
    if not names or any(not isinstance(n, str) or not n for n in names):
        raise ValueError(
            f"target_modules {target_modules!r} is empty or has empty names; give module names "
            f"such as q_proj,v_proj or a preset: {', '.join(TARGET_PRESETS)}"
        )
    return names


@dataclass
class LorettaConfig:
    """Configuration of a LoRETTA adapter.

    method: "rep" (TT-factored LoRA update, mergeable) or "adp" (TT bottleneck adapters).
    r, alpha, dropout: rep's rank, scale (update scaled by alpha / r) and input dropout.
    bottleneck, activation, adapter_scaling: adp's bottleneck width, nonlinearity and output scale.
    tensor_rank: TT bond rank of every factor matrix.
    target_modules: module names (matched as the last components of a module's path), a preset
        ("attn", "mlp", "all") or None for the method's default.
    init: "zero" (the adapted model equals the base model at step 0) or "reference" (the
        reference implementation's Gaussian cores, for reproducing the paper).
    train_norms: also train every RMSNorm / LayerNorm weight (the paper's parameter counts do).
    tt_shapes: explicit TT modes. Keys are "<module>.<factor>" (module matched like a target;
        factor A/B for rep, down/up for adp) or "<d_in>x<d_out>" for every factor of that shape.
    """

    method: str = "rep"
    r: int = 8
    tensor_rank: int = 5
    alpha: float = 16.0
    dropout: float = 0.0
    bottleneck: int = 64
    activation: str = "relu"
    adapter_scaling: float = 1.0
    target_modules: list[str] | str | None = None
    init: str = "zero"
    train_norms: bool = True
    tt_shapes: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        for name in ("r", "tensor_rank", "bottleneck"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}: use one of {', '.join(INITS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}: use one of {', '.join(ACTIVATIONS)}")
        self.target_modules = resolve_targets(self.target_modules, self.method)
        self.alpha, self.dropout = float(self.alpha), float(self.dropout)
        self.adapter_scaling = float(self.adapter_scaling)
        self.train_norms = bool(self.train_norms)
        if not isinstance(self.tt_shapes, dict):
            raise ValueError("tt_shapes must map '<module>.<factor>' or '<d_in>x<d_out>' to a list of modes")
        for key, modes in self.tt_shapes.items():
            if not isinstance(modes, (list, tuple)) or not modes or any(
                    isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in modes):
                raise ValueError(f"tt_shapes[{key!r}] = {modes!r}: modes must be a list of integers >= 1")
        self.tt_shapes = {key: list(modes) for key, modes in self.tt_shapes.items()}

    @property
    def scaling(self) -> float:
        """The rep update's scale alpha / r."""
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LorettaConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LoRETTA config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LorettaConfig":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); re-save the adapter config") from None
