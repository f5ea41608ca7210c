"""Shared fixtures."""
import pytest
import torch


@pytest.fixture
def token_ids() -> torch.Tensor:
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(123))
