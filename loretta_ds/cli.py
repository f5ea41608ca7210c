"""`loretta-ds` command line: one subcommand per module in loretta_ds.commands.

Each command module offers ``add_arguments(parser)`` (cheap imports only, so ``--help`` and fast
commands stay fast) and ``run(args) -> int``. Errors a user can cause (ValueError,
FileNotFoundError) print one message and exit 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module under loretta_ds.commands, one-line help)
COMMANDS = {
    "count": ("count", "trainable and total parameters of a LoRETTA model (meta device, no weights)"),
}

USER_ERRORS = (ValueError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loretta-ds", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"loretta_ds.commands.{module_name}")
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks for errors")
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def report_user_error(err: BaseException) -> None:
    """Print a user error once (rank 0 of a distributed run) as one paragraph."""
    if os.environ.get("RANK", "0") == "0":
        print(f"error: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as err:
        if args.debug:
            raise
        report_user_error(err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
