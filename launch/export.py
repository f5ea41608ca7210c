"""Thin shim: `python launch/export.py RUN_DIR OUT_DIR [options]` == `loretta-ds export ...`."""
import os
import sys

# Runs from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loretta_ds.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
