"""Merged export of a ~240 MB base in 9 shards: bounded memory, complete index, kill -9 safety.

The export runs in a child process so that its peak RSS is its own and so that it can be killed
mid-way. The peak is the kernel's per-process high-water mark VmHWM, measured above the RSS the
child had after its imports. (getrusage's ru_maxrss would not do: Linux carries it across
fork + exec, so a child of this big test process would report the parent's peak.)
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from loretta_ds.export import TEMP_SUFFIX, export_merged
from loretta_ds.export.safetensors_stream import read_header

from test_export import make_run
from tiny_models import tiny_llama

REPO = Path(__file__).resolve().parents[1]
SHARD = "30MB"

CHILD = textwrap.dedent("""
    import json, sys
    import torch
    from loretta_ds.export import export_merged

    def kilobytes(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    torch.ones(64, 8).addmm_(torch.ones(64, 8), torch.ones(8, 8))  # BLAS set up before the baseline
    baseline = kilobytes("VmRSS") * 1024
    try:  # restart the high-water mark here, so that import-time peaks do not count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the peak also covers the imports: the check only gets stricter
    export_merged(sys.argv[1], sys.argv[2], max_shard_size=sys.argv[3], log=lambda m: print(m, flush=True))
    print(json.dumps({"baseline": baseline, "peak": kilobytes("VmHWM") * 1024,
                      "deepspeed": "deepspeed" in sys.modules, "transformers": "transformers" in sys.modules}))
""")


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    """A 59M-parameter LLaMA (236 MB in float32) saved in 9 shards of 22-30 MB, and a run on it."""
    root = tmp_path_factory.mktemp("big")
    base = tiny_llama(hidden=1024, intermediate=2752, layers=4, heads=16, vocab=4096)
    base.save_pretrained(root / "base", max_shard_size=SHARD)
    make_run(root / "run", root / "base", base, scale=0.15)
    return root


def spawn_export(run: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(run), str(out), SHARD], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_peak_memory_stays_below_two_shards_and_index_is_complete(big_run):
    base_shards = sorted((big_run / "base").glob("model-*.safetensors"))
    assert len(base_shards) >= 8
    largest = max(p.stat().st_size for p in base_shards)
    total = sum(p.stat().st_size for p in base_shards)

    child = spawn_export(big_run / "run", big_run / "out")
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr
    report = json.loads(stdout.strip().splitlines()[-1])
    above = report["peak"] - report["baseline"]
    print(f"\nbase {total / 1e6:.0f} MB in {len(base_shards)} shards, largest {largest / 1e6:.1f} MB; "
          f"export peak RSS {report['peak'] / 1e6:.0f} MB = baseline {report['baseline'] / 1e6:.0f} MB "
          f"+ {above / 1e6:.1f} MB ({above / largest:.2f} x largest shard)")
    assert above < 2 * largest
    assert not report["deepspeed"] and not report["transformers"]

    base_index = json.loads((big_run / "base" / "model.safetensors.index.json").read_text())
    # Parse keeping duplicate keys, which a plain dict would silently merge.
    top = dict(json.loads((big_run / "out" / "model.safetensors.index.json").read_text(), object_pairs_hook=list))
    names = [name for name, _ in top["weight_map"]]
    assert len(names) == len(set(names))
    weight_map = dict(top["weight_map"])
    assert set(weight_map) == set(base_index["weight_map"])
    in_headers = [name for shard in sorted(set(weight_map.values()))
                  for name in read_header(big_run / "out" / shard)[0]]
    assert sorted(in_headers) == sorted(weight_map)  # every tensor stored exactly once
    assert all(name in read_header(big_run / "out" / shard)[0] for name, shard in weight_map.items())


def test_kill_9_mid_export_leaves_no_complete_out_dir_and_a_rerun_cleans_up(big_run):
    out = big_run / "killed"
    temp = Path(str(out) + TEMP_SUFFIX)
    child = spawn_export(big_run / "run", out)
    deadline = time.monotonic() + 120
    # Wait until the first output shard is complete (the second one has been started), then kill.
    while not (temp.is_dir() and len(list(temp.glob("model-*.safetensors"))) >= 2):
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    assert not out.exists()                       # nothing under the name users look for
    assert (temp / "EXPORT_INCOMPLETE").is_file()  # and the leftover says what it is
    assert not (temp / "config.json").exists()

    messages = []
    export_merged(big_run / "run", out, max_shard_size=SHARD, log=messages.append)
    assert any("interrupted export" in m and str(temp) in m for m in messages)
    assert not temp.exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    base_index = json.loads((big_run / "base" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(base_index["weight_map"])
