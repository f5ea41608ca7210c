"""Thin shim for launchers: `deepspeed launch/train.py ...` == `loretta-ds train ...`.

The deepspeed launcher appends --local_rank=N (accepted and ignored: the rank comes from the
environment); without a launcher, `python launch/train.py ...` trains as a single process.
"""
import os
import sys

# Runs from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loretta_ds.cli import run_and_exit  # noqa: E402

if __name__ == "__main__":
    run_and_exit(["train", *sys.argv[1:]])
