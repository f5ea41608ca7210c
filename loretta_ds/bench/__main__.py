"""`python -m loretta_ds.bench [options]`: the same as `loretta-ds bench [options]`."""
import argparse
import sys

from ..cli import USER_ERRORS, report_user_error
from ..commands import bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loretta_ds.bench", description=bench.__doc__)
    bench.add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.prog = "python -m loretta_ds.bench"
    try:
        return bench.run(args)
    except USER_ERRORS as err:
        report_user_error(err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
