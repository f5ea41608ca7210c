"""`loretta-ds train`: fine-tune a causal LM with LoRETTA (or a LoRA baseline) under DeepSpeed.

The same run as `deepspeed launch/train.py ...` (or `python launch/train.py ...` for one process).
"""
from __future__ import annotations

import argparse
import os
import sys

from ..run_config import add_train_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..distributed.errors import RunFailure
    from ..run_config import config_from_args
    from ..trainer import run_training

    cfg = config_from_args(args)
    try:
        return run_training(cfg)
    except RunFailure as err:
        if cfg.debug:
            raise
        # Diverged, a lost rank, a failed save: not a bug, so one clear message (from one rank: 0,
        # unless rank 0 is the one lost), no traceback.
        if int(os.environ.get("RANK", "0")) == err.reporter:
            # Another rank starts a fresh line: rank 0's progress bar may have left one open.
            fresh_line = "\n" if err.reporter != 0 else ""
            print(f"{fresh_line}error: {err}", file=sys.stderr, flush=True)
        return 1
