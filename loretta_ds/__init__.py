"""loretta_ds: LoRETTA tensor-train fine-tuning of LLaMA-2 under DeepSpeed ZeRO-3."""
from .adapters import (LorettaConfig, count_parameters, export_peft_lora, inject, load_adapter,
                       merge, merge_and_unload, save_adapter, unmerge)

__version__ = "0.1.0"

# Exit status of a run stopped by SIGUSR1/SIGTERM after checkpointing (EX_TEMPFAIL): the SLURM
# scripts requeue on it.
PREEMPTED_EXIT_CODE = 75

__all__ = ["LorettaConfig", "inject", "merge", "unmerge", "merge_and_unload", "save_adapter",
           "load_adapter", "count_parameters", "export_peft_lora", "PREEMPTED_EXIT_CODE"]
