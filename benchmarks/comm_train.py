"""`deepspeed benchmarks/comm_train.py <loretta-ds train flags> [--comm_warmup N --comm_steps M]`:
a normal training run with the communication probe of benchmarks/harness/comm.py installed."""
import os
import sys

# Runs from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness.comm import train_with_probe  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_with_probe(sys.argv[1:]))
