"""Every file a run or an export writes follows the umask, as files written with open() do: on a
shared cluster a colleague in the group must be able to read the adapter, the checkpoints and the
exports (owner-only 0600 files, as temporary-file helpers create, would hide them)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from reliability_support import clean_env, single_command

pytestmark = pytest.mark.slow  # a real training run and its exports


def run_under_umask(command: list[str], umask: int, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: os.umask(umask))


def wrong_modes(root: Path, umask: int) -> list[str]:
    """Entries under ``root`` whose permission bits differ from what open()/mkdir() give under ``umask``."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        if mode != expected:
            found.append(f"{path.relative_to(root.parent)}: {oct(mode)} (expected {oct(expected)})")
    return found


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_checkpoints_and_exports_follow_the_umask(tmp_path, umask):
    out = tmp_path / "run"
    res = run_under_umask(single_command(out, max_steps=4, save_every=2, export="true"), umask, tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (out / "adapter").is_dir() and (out / "merged").is_dir() and (out / "checkpoints").is_dir()
    peft = tmp_path / "peft"
    res = run_under_umask([sys.executable, "-m", "loretta_ds.cli", "export", str(out), str(peft),
                           "--format", "peft-lora"], umask, tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (peft / "adapter_model.safetensors").is_file()
    assert wrong_modes(out, umask) == [] and wrong_modes(peft, umask) == []
