"""The adapter settings, declared once: ``AdapterSettings`` (every knob, with its help text, which
the command line and YAML files take as they are) and ``LorettaConfig`` (a method and its settings,
validated once, round-tripping JSON: what inject, save_adapter and the exports use)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..settings import setting

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
# The reference's targets: rep adapts q and v; adp puts adapters around the MLP projections. The
# LoRA baseline adapts what rep adapts, so the two compare like for like.
DEFAULT_TARGETS = {"rep": ["q_proj", "v_proj"], "adp": MLP_PROJECTIONS, "lora": ["q_proj", "v_proj"]}

# rep's update is linear (Delta W = scaling * (A B)^T): it merges into the base weights and is a LoRA.
MERGEABLE_METHODS = ("rep",)
NOT_MERGEABLE = (
    "LoRETTA_adp adapters cannot be merged into the base weights or written as LoRA: they add a "
    "nonlinear bottleneck h + s * up(act(down(h))) that no change of the linear weights reproduces. "
    "Keep the adapter (save_adapter, or export --format adapter: loaded with loretta_ds.load_adapter "
    "on the base model); merging and the peft-lora format need a LoRETTA_rep run (method 'rep')."
)


def check_mergeable(method: str) -> None:
    """ValueError (the one message for it) unless ``method``'s update can be merged / written as LoRA."""
    if method not in MERGEABLE_METHODS:
        raise ValueError(NOT_MERGEABLE)


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


def _preset_modules(modules: list[str]) -> str:
    """A target preset's modules for the help text; a union of other presets is named as such."""
    parts = [name for name, mods in TARGET_PRESETS.items() if mods != modules and set(mods) <= set(modules)]
    if parts and sum(len(TARGET_PRESETS[p]) for p in parts) == len(modules):
        return " + ".join(parts)
    return ",".join(modules)


def parse_targets(value) -> str | list[str]:
    """A flag's or YAML's target_modules: a preset, comma-separated names, or a YAML list of names."""
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    if isinstance(value, str) and value.strip() and all(part.strip() for part in value.split(",")):
        return value.strip()
    if not isinstance(value, (str, list)):
        raise ValueError(f"target_modules must be text, got {value!r} ({type(value).__name__}); in YAML, quote "
                         f"it: target_modules: \"{value}\"")
    raise ValueError(f"target_modules {value!r} is empty or has empty names; give module names such as "
                     f"q_proj,v_proj or a preset: {', '.join(TARGET_PRESETS)}")


def parse_tt_shapes(value) -> dict[str, list[int]]:
    """tt_shapes from YAML (a mapping), JSON text, or the flag's words ``KEY=M1xM2x...`` (one per
    factor: ``q_proj.A=8x8x12 768x768=8x8x12``)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"tt_shapes is not valid JSON ({err.msg}): {text!r}") from None
        else:
            value = [text]
    if isinstance(value, (list, tuple)):
        shapes = {}
        for word in value:
            key, sep, modes = str(word).partition("=")
            try:
                parsed = [int(m) for m in modes.lower().split("x")] if sep and key else None
            except ValueError:
                parsed = None
            if not parsed:
                raise ValueError(f"tt_shapes entry {word!r} is not KEY=M1xM2x... (e.g. q_proj.A=8x8x12 or "
                                 "768x768=8x8x12)")
            shapes[key] = parsed
        return shapes
    if isinstance(value, dict):
        return value
    raise ValueError(f"tt_shapes must map '<module>.<factor>' or '<d_in>x<d_out>' to modes, got {value!r}")


@dataclass
class AdapterSettings:
    """Every adapter knob (of LoRETTA_rep, LoRETTA_adp and the LoRA baseline), with its help text.

    The training run nests one (``TrainConfig.adapter``; the ``adapter:`` block of a YAML run
    config); each field is also a flag of ``train``, ``count``, ``estimate`` and ``plan``.
    Validated here field by field; ``LorettaConfig`` adds the method and resolves the targets.
    """

    r: int = setting(8, help="rep: rank of the low-rank update B(A(x)) that the tensor trains store (default 8); "
                             "lora: the LoRA rank")
    tensor_rank: int = setting(5, help="TT bond rank of every factor matrix: more rank, more trainable "
                                       "parameters (default 5)")
    alpha: float = setting(16.0, help="rep and lora: the update is scaled by alpha / r (default 16)")
    dropout: float = setting(0.0, help="rep and lora: dropout on the adapter's input, 0 <= p < 1 (default 0)")
    bottleneck: int = setting(64, help="adp: width of each TT bottleneck adapter (default 64)")
    activation: str = setting("relu", choices=ACTIVATIONS,
                              help="adp: the bottleneck's nonlinearity: " + " | ".join(ACTIVATIONS) + " (default relu)")
    adapter_scaling: float = setting(1.0, help="adp: the bottleneck's output is scaled by this (default 1)")
    target_modules: str | list[str] | None = setting(
        None, parse=parse_targets,
        help="modules to adapt: comma-separated names matched as the last part of a module's path "
             "(q_proj,v_proj) or a preset: "
             + "; ".join(f"{name} ({_preset_modules(mods)})" for name, mods in TARGET_PRESETS.items())
             + " (default: rep and lora " + ",".join(DEFAULT_TARGETS["rep"]) + "; adp "
             + ",".join(DEFAULT_TARGETS["adp"]) + ", the paper's placement)")
    init: str = setting("zero", choices=INITS,
                        help=" | ".join(INITS) + ": zero (default) starts from the base model exactly (the update "
                             "is 0 at step 0, every core still gets gradient); reference draws the paper's "
                             "Gaussian cores")
    train_norms: bool = setting(True, help="also train every RMSNorm weight, as the paper's parameter counts do "
                                           "(true/false; default true; the LoRA baseline never does)")
    tt_shapes: dict[str, list[int]] = setting(
        default_factory=dict, parse=parse_tt_shapes, nargs="+",
        help="explicit TT modes instead of the automatic factorization, one KEY=M1xM2x... per factor: KEY is "
             "<module>.<factor> (module matched like a target; factor A/B for rep, down/up for adp) or "
             "<d_in>x<d_out> for every factor of that shape (e.g. q_proj.A=8x8x12); in YAML a mapping")

    def __post_init__(self) -> None:
        for name in ("r", "tensor_rank", "bottleneck"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("alpha", "dropout", "adapter_scaling"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
                    or value in (float("inf"), float("-inf")):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be a number > 0 (the update is scaled by alpha / r), got {self.alpha!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}: use one of {', '.join(INITS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}: use one of {', '.join(ACTIVATIONS)}")
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
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules is empty; give module names such as q_proj,v_proj or a preset: "
                             + ", ".join(TARGET_PRESETS))

    def loretta(self, method: str) -> "LorettaConfig":
        """The LorettaConfig of ``method`` (rep or adp) with these settings."""
        return LorettaConfig(method=method, **dataclasses.asdict(self))

    def lora_targets(self) -> list[str]:
        """The modules the LoRA baseline adapts (rep's, by default)."""
        return resolve_targets(self.target_modules, "lora")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class LorettaConfig(AdapterSettings):
    """Configuration of a LoRETTA adapter: ``method`` and the ``AdapterSettings`` it uses.

    method: "rep" (TT-factored LoRA update, mergeable) or "adp" (TT bottleneck adapters).
    r, alpha, dropout: rep's rank, scale (update scaled by alpha / r) and input dropout.
    bottleneck, activation, adapter_scaling: adp's bottleneck width, nonlinearity and output scale.
    tensor_rank: TT bond rank of every factor matrix.
    target_modules: module names (matched as the last components of a module's path), a preset
        ("attn", "mlp", "all") or None for the method's default; a list once validated.
    init: "zero" (the adapted model equals the base model at step 0) or "reference" (the
        reference implementation's Gaussian cores, for reproducing the paper).
    train_norms: also train every RMSNorm / LayerNorm weight (the paper's parameter counts do).
    tt_shapes: explicit TT modes. Keys are "<module>.<factor>" (module matched like a target;
        factor A/B for rep, down/up for adp) or "<d_in>x<d_out>" for every factor of that shape.
    """

    method: str = "rep"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        super().__post_init__()
        self.target_modules = resolve_targets(self.target_modules, self.method)

    def settings(self) -> AdapterSettings:
        """The settings without the method."""
        values = dataclasses.asdict(self)
        values.pop("method")
        return AdapterSettings(**values)

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
