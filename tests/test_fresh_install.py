"""What a user meets first: the package installed without the checkout, and a rendezvous port that
another job already holds.

Real processes throughout: a wheel built from this tree and installed into a new virtual
environment, the deepspeed launcher, and a second trainer holding the port.
"""
import os
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reliability_support import Run, clean_env, deepspeed_command, free_port, wait_for_step

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[1]
# A few steps of the default job: enough to train, evaluate and print the final eval accuracy.
QUICK = ["--max_steps", "3", "--eval_every", "0", "--eval_batches", "2", "--seq_len", "48",
         "--save_every", "0", "--export", "false"]
FINISHED = "finished 3 steps"


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory) -> Path:
    """A venv holding loretta_ds as a plain (non-editable) wheel install.

    The heavy dependencies come from this interpreter's site-packages (no downloads), the package
    itself only from the wheel: the test then proves that nothing it needs lives in the checkout.
    """
    work = tmp_path_factory.mktemp("install")
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(wheels), str(REPO)], check=True, capture_output=True, text=True, timeout=300)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # The heavy dependencies are this interpreter's (a venv's, where the tests run in one): its
    # site-packages go on the new venv's path after the venv's own, where the wheel installs.
    # Paths added this way have their .pth files skipped, so an editable install of the checkout
    # in this interpreter stays out of the new venv.
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    (Path(purelib) / "dependencies_of_the_test_interpreter.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    wheel = next(wheels.glob("loretta_ds-*.whl"))
    subprocess.run([str(venv / "bin" / "pip"), "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True, text=True, timeout=300)
    return venv


def venv_env(venv: Path) -> dict:
    env = clean_env()
    env.pop("PYTHONPATH", None)  # nothing from the checkout
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def test_wheel_install_runs_the_default_job_outside_the_checkout(installed_venv, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = venv_env(installed_venv)
    python = str(installed_venv / "bin" / "python")
    where = subprocess.run([python, "-c", "import loretta_ds; print(loretta_ds.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    assert where.startswith(str(installed_venv)), f"loretta_ds imported from {where}, not the wheel install"

    # One process, the default ds_config (a shipped one): no path into a checkout anywhere.
    single = subprocess.run([str(installed_venv / "bin" / "loretta-ds"), "train", "--output_dir", "single", *QUICK],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    output = single.stdout + single.stderr
    assert single.returncode == 0, output[-3000:]
    assert FINISHED in output and "eval accuracy" in output, output[-3000:]
    assert (elsewhere / "single" / "adapter" / "adapter.safetensors").is_file()

    # Two ranks under the deepspeed launcher, the console script as the launched program and a
    # shipped config by name.
    launcher = [python, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port())]
    script = str(installed_venv / "bin" / "loretta-ds")
    double = subprocess.run([*launcher, script, "train", "--ds_config", "zero3_offload", "--output_dir", "double",
                             *QUICK], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    output = double.stdout + double.stderr
    assert double.returncode == 0, output[-3000:]
    assert FINISHED in output and "eval accuracy" in output, output[-3000:]
    assert "2 process(es)" in output
    assert (elsewhere / "double" / "adapter" / "adapter.safetensors").is_file()


def test_unknown_ds_config_name_lists_the_shipped_ones(installed_venv, tmp_path):
    result = subprocess.run([str(installed_venv / "bin" / "loretta-ds"), "train", "--ds_config", "zero4",
                             "--output_dir", "out"], cwd=tmp_path, env=venv_env(installed_venv),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "zero2, zero3, zero3_offload" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_taken_rendezvous_port_is_named_within_seconds(tmp_path):
    """Two jobs on one node with the same port: the second says so and ends; the first runs on."""
    first_command = deepspeed_command(tmp_path / "first", max_steps=2000, save_every=0)
    port = first_command[first_command.index("--master_port") + 1]
    first = Run(first_command, tmp_path / "first.log")
    try:
        # Stepping means its rank 0 listens on the port (the rendezvous is done).
        wait_for_step(first, tmp_path / "first", 1, timeout=300)
        command = deepspeed_command(tmp_path / "second")
        command[command.index("--master_port") + 1] = port
        started = time.monotonic()
        second = subprocess.run(command, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - started
        output = second.stdout + second.stderr
        assert second.returncode != 0, output[-3000:]
        assert elapsed < 60, f"the second job took {elapsed:.0f} s to end"
        message = f"the rendezvous port {port} (MASTER_PORT) is already in use"
        assert output.count(message) == 1, output[-3000:]
        assert "--master_port" in output
        assert "Traceback" not in output and "lost contact" not in output, output[-3000:]
        assert not (tmp_path / "second").exists()  # nothing written
        assert first.process.poll() is None, "the first job must run on"
    finally:
        first.close()
