"""Shared fixtures."""
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from loretta_ds.distributed.op_cache import use_environment_extension_cache

# The tests that build DeepSpeed's ops in this process (CPU Adam) share the trainers' cache (the
# variable is inherited by every trainer a test starts): one build per environment, not two.
use_environment_extension_cache()


@pytest.fixture
def token_ids() -> torch.Tensor:
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(123))


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root); skipped with the reason where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the full-disk test mounts a 1 MiB tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture(scope="session")
def builtin_model() -> Path:
    """The built-in tiny model (built once per machine, cached)."""
    from loretta_ds.tiny_llama import ensure_tiny_llama

    return ensure_tiny_llama()


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load weights fails the test: every user error must be reported before that."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the user error was reported")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
