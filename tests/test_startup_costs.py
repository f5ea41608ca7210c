"""The two DeepSpeed start-up costs the engine avoids (loretta_ds/distributed/startup_costs.py), checked
in a fresh interpreter: the test process may already hold torch's compiler or a cached CPU answer."""
import subprocess
import sys

import pytest

from loretta_ds.distributed.startup_costs import uses_muon

pytestmark = pytest.mark.slow

# What ZeRO's optimizer check does, after the trainer's imports (transformers brings TorchDynamo in).
PROBE = """
import sys, time
import transformers.models.llama.modeling_llama, deepspeed
from loretta_ds.distributed.startup_costs import avoid_startup_costs
avoid_startup_costs({"optimizer": {"type": sys.argv[1]}})
from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam
import cpuinfo
first = cpuinfo.get_cpu_info()
started = time.perf_counter()
again = cpuinfo.get_cpu_info()
print("inductor", "torch._inductor.compile_fx" in sys.modules)
print("same", first == again and bool(first))
print("again_s", time.perf_counter() - started)
print("dynamo_env", "TORCHDYNAMO_DISABLE" in __import__("os").environ)
"""


def probe(optimizer_type: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, optimizer_type], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)


def test_an_adam_run_neither_compiles_muon_nor_asks_the_cpu_twice():
    found = probe("AdamW")
    # Without the start-up change, importing the Muon module imports torch's inductor compiler, and
    # every get_cpu_info() starts a Python interpreter (over a second).
    assert found["inductor"] == "False"
    assert found["same"] == "True" and float(found["again_s"]) < 0.05
    assert found["dynamo_env"] == "False"  # torch.compile is off only while that one module loads


def test_a_muon_run_keeps_its_compiled_kernels():
    assert uses_muon({"optimizer": {"type": "Muon"}}) and not uses_muon({"optimizer": {"type": "AdamW"}})
    assert not uses_muon({})
    assert probe("Muon")["inductor"] == "True"
