"""Shared fixtures."""
import pytest
import torch

from loretta_ds.distributed.engine import use_environment_extension_cache

# The tests that build DeepSpeed's ops in this process (CPU Adam) share the trainers' cache (the
# variable is inherited by every trainer a test starts): one build per environment, not two.
use_environment_extension_cache()


@pytest.fixture
def token_ids() -> torch.Tensor:
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(123))
