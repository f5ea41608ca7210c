"""BenchConfig: the model shape, workload and measurement settings of one benchmark run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Every contender the runner knows, in table order; all of them run by default.
ALL_CONTENDERS = ["floor", "rep", "adp", "lora", "adapter", "ref_rep", "ref_adp"]
DEFAULT_CONTENDERS = list(ALL_CONTENDERS)
DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class BenchConfig:
    """One benchmark run.

    The default shape is hidden 768 because the reference package's TT table covers it, so all
    contenders run; the MLP width keeps LLaMA-2's ratio (11008 / 4096 = 2.69, rounded to 2048).
    The vocabulary is small on purpose: the LM head is the same frozen matmul for every contender,
    and a 32000-wide head would only dilute the differences this benchmark is about.
    """

    hidden: int = 768
    intermediate: int = 2048
    layers: int = 4
    heads: int = 12
    kv_heads: int | None = None
    vocab: int = 1024
    batch: int = 4
    seq_len: int = 256
    steps: int = 10          # timed steps per contender; figures are medians over these
    warmup: int = 2          # untimed steps per contender before timing
    memory_repeats: int = 3  # memory is the median over this many extra steps per contender
    threads: int = 1         # torch.set_num_threads for the whole run (CPU)
    device: str = "cpu"
    clock: str = "wall"      # wall (perf_counter) | cpu (process CPU time; CPU device only)
    dtype: str = "fp32"
    attn: list[str] = field(default_factory=lambda: ["sdpa"])
    contenders: list[str] = field(default_factory=lambda: list(DEFAULT_CONTENDERS))
    seed: int = 0
    lr: float = 1e-4
    train_norms: bool = True  # LoRETTA and dense adapter also train norm weights (the paper's set)

    def __post_init__(self) -> None:
        for name in ("hidden", "intermediate", "layers", "heads", "vocab", "batch", "seq_len",
                     "steps", "threads", "memory_repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        unknown = [c for c in self.contenders if c not in ALL_CONTENDERS]
        if unknown or not self.contenders:
            raise ValueError(f"unknown contenders {unknown}; choose from {', '.join(ALL_CONTENDERS)}")
        if self.clock not in ("wall", "cpu") or (self.clock == "cpu" and self.device != "cpu"):
            raise ValueError(f"clock must be wall, or cpu with device cpu; got {self.clock!r} on {self.device}")
        if not self.attn:
            raise ValueError("give at least one attention implementation, e.g. sdpa")

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    def to_dict(self) -> dict:
        return asdict(self)
