"""What the output dtype's rounding leaves of the adapter's update in a merged export.

A merged weight is W + dW computed in float32 and rounded once to the output dtype. bfloat16 keeps
8 significant bits: an update element below half a unit in the last place of its weight rounds
back to W and is gone (for LLaMA's weights, |W| ~ 0.02, that is |dW| below ~6e-5). A short or
small-learning-rate run gives such updates, and then the merged checkpoint holds only part of what
was trained, whoever merges it (PEFT's merge_and_unload in bf16 rounds the same).

The merge measures this as it streams, from the blocks it has in hand (W, the float32 sum, the
rounded block), per merged weight:

  lost = ||written - round(W) - dW|| / ||dW||   (0: all of dW is in the file; 1: none of it)
  kept = <written - round(W), dW> / ||dW||^2    (the share of dW left in its own direction)

round(W) is W itself for a float base written in its dtype or wider; it keeps the base's own
rounding (a 4-bit base dequantized, a float32 base written in bf16) out of the figure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# Warn when the rounding error reaches 35% of the update's norm. Measured on LLaMA-2-7B's q/v weights
# with the update of a one-step run and that update scaled up (docs/benchmarks.md, "What a bf16
# merge keeps of the update"): while dW is well above half a bf16 step the error is rounding noise
# spread evenly around dW, which the outputs barely see (lost 0.14-0.25 keeps 98.5-99.8% of dW along
# its direction); from lost ~0.35 on, whole elements of dW round away and the kept share falls
# faster (lost 0.48: 89%; lost 0.74, the one-step run itself: 59%). At 0.35 about 5% of the update
# is gone along its direction: more than that is a loss a user should choose, not discover.
LOST_WARN_THRESHOLD = 0.35


@dataclass
class _Sums:
    error_sq: float = 0.0
    update_sq: float = 0.0
    kept_dot: float = 0.0

    def lost(self) -> float:
        return math.sqrt(self.error_sq / self.update_sq) if self.update_sq > 0 else 0.0

    def kept(self) -> float:
        return self.kept_dot / self.update_sq if self.update_sq > 0 else 1.0


@dataclass
class UpdateRounding:
    """Running sums over the blocks of every merged weight, in the order they were written."""

    tensors: dict[str, _Sums] = field(default_factory=dict)
    dtypes: set[str] = field(default_factory=set)

    def add(self, name: str, base: torch.Tensor, merged: torch.Tensor, written: torch.Tensor,
            base_dtype: torch.dtype) -> None:
        """base: rows of W in float32; merged: W + dW of those rows in float32; written: the
        rounded rows going into the file; base_dtype: the dtype W was stored in."""
        update = (merged - base).view(-1)
        # written - round(W); round(W) is W itself when the output dtype is the base's own.
        change = written.to(torch.float32, copy=True)
        change.sub_(base if written.dtype == base_dtype else base.to(written.dtype).float())
        change = change.view(-1)
        self.dtypes.add(str(written.dtype).removeprefix("torch."))
        sums = self.tensors.setdefault(name, _Sums())
        sums.update_sq += float(torch.dot(update, update))
        sums.kept_dot += float(torch.dot(change, update))
        change.sub_(update)
        sums.error_sq += float(torch.dot(change, change))

    def total(self) -> _Sums:
        whole = _Sums()
        for sums in self.tensors.values():
            whole.error_sq += sums.error_sq
            whole.update_sq += sums.update_sq
            whole.kept_dot += sums.kept_dot
        return whole

    def dtype_text(self) -> str:
        return " / ".join(sorted(self.dtypes)) or "none"

    def summary(self) -> dict:
        """The record kept in the export's provenance (loretta_export.json, "update_rounding")."""
        total = self.total()
        worst = max(self.tensors, key=lambda name: self.tensors[name].lost(), default=None)
        return {"dtype": self.dtype_text(), "lost": round(total.lost(), 4), "kept": round(total.kept(), 4),
                "warn_from": LOST_WARN_THRESHOLD,
                "worst": {"tensor": worst, "lost": round(self.tensors[worst].lost(), 4)} if worst else None,
                "per_tensor": {name: {"lost": round(s.lost(), 4), "kept": round(s.kept(), 4)}
                               for name, s in self.tensors.items()}}

    def warning(self) -> str | None:
        """A message for the user when a noticeable part of the update did not survive, else None."""
        total = self.total()
        if total.lost() < LOST_WARN_THRESHOLD:
            return None
        dtype_text = self.dtype_text()
        return (f"warning: rounding the merged weights to {dtype_text} lost much of the adapter's update: "
                f"the rounding error is {total.lost():.0%} of the update's size and {total.kept():.0%} of the "
                f"update is left in its direction (over {len(self.tensors)} weights; each update element below "
                f"half a {dtype_text} step of its weight rounds back to the base value), so the merged model "
                "misses that part of the training. Export with --dtype float32, or keep the adapter "
                "separate (--format peft-lora, or the run's adapter/ with loretta_ds); figures in "
                "loretta_export.json under update_rounding.")
