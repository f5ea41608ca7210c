"""`loretta-ds` command line: one subcommand per module in loretta_ds.commands.

Each command module offers ``add_arguments(parser)`` (cheap imports only) and ``run(args) -> int``;
only the module of the command being run is imported, so one command's heavy or broken imports
never slow down or break another. Errors a user can cause (ValueError,
FileNotFoundError) print one message and exit 2 (or the error's own ``exit_status``, where a caller
must tell that error apart); ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

# name -> (module under loretta_ds.commands, one-line help)
COMMANDS = {
    "train": ("train", "fine-tune with LoRETTA (or a LoRA baseline) under DeepSpeed; the run behind launch/train.py"),
    "plan": ("plan", "what a training run would do (batch split, steps, ds_config, targets, resume point), "
                     "checked as train checks it, without loading weights"),
    "count": ("count", "trainable and total parameters of a LoRETTA model (meta device, no weights)"),
    "export": ("export", "merged HF checkpoint, PEFT LoRA or LoRETTA adapter from a run (streams, no GPU)"),
    "generate": ("generate", "text from a run (base + adapter) or a model directory: greedy or sampled, chat template"),
    "estimate": ("estimate", "per-GPU and host memory plan of a LoRETTA run under ZeRO-3 (meta device)"),
}

USER_ERRORS = (ValueError, FileNotFoundError)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``selected``, only that command gets its arguments (and import)."""
    parser = argparse.ArgumentParser(
        prog="loretta-ds", description="LoRETTA tensor-train fine-tuning of LLaMA-2 under DeepSpeed ZeRO-3")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if selected not in (None, name):
            continue
        module = importlib.import_module(f"loretta_ds.commands.{module_name}")
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks for errors")
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def _selected_command(argv: list[str]) -> str | None:
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in COMMANDS else None


def report_user_error(err: BaseException) -> None:
    """Print a user error once (rank 0 of a distributed run) as one paragraph."""
    if os.environ.get("RANK", "0") == "0":
        print(f"error: {err}", file=sys.stderr)


def _launcher_flags_after_command(argv: list[str]) -> list[str]:
    """The deepspeed launcher puts ``--local_rank=N`` before everything else, so
    ``deepspeed $(which loretta-ds) train ...`` runs ``loretta-ds --local_rank=0 train ...``: hand
    the flag to the command, which accepts (and ignores) it."""
    moved, rest = [], list(argv)
    while rest and rest[0].startswith("--local_rank"):
        moved.append(rest.pop(0))
        if moved[-1] == "--local_rank" and rest:
            moved.append(rest.pop(0))
    if moved and rest:
        rest[1:1] = moved
    return rest if moved and rest else list(argv)


def main(argv: list[str] | None = None) -> int:
    argv = _launcher_flags_after_command(sys.argv[1:] if argv is None else argv)
    args = build_parser(_selected_command(argv)).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as err:
        if args.debug:
            raise
        report_user_error(err)
        return getattr(err, "exit_status", 2)


def run_and_exit(argv: list[str] | None = None) -> NoReturn:
    """The console entry point (`loretta-ds`, launch/*.py): ``main``, then the process ends.

    A rank of a multi-process training run ends with ``os._exit`` once its output is flushed. By
    then the run has written everything, left the process group and released its lock; what is
    left is the interpreter's teardown, in which the communication stack's C++ threads (gloo, the
    rendezvous store) can be destroyed while still joinable. That aborts a rank which has finished
    its work ("terminate called without an active exception", exit -6, seen about once in a few
    dozen two-process launches on the CI machine), and the launcher then reports the whole run
    failed. One process, and every other command, exits normally.
    """
    argv = sys.argv[1:] if argv is None else argv
    code = main(argv)
    if _selected_command(_launcher_flags_after_command(argv)) == "train" and \
            int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run_and_exit()
