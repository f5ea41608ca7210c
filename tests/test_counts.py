"""Exact trainable-parameter counts on meta-device LLaMA-2 models (the table in LORETTA.md)."""
import pytest

from loretta_ds import LorettaConfig, count_parameters, inject
from loretta_ds.models import load_model_config, meta_model

# (rep TT cores, adp TT cores + biases, norms) per model, from the reference implementation.
EXPECTED = {
    "llama2-7b": (102_400, 610_560, 266_240),
    "llama2-13b": (116_800, 877_680, 414_720),
    "llama2-70b": (348_800, 2_672_640, 1_318_912),
}
TOTAL_BASE = {"llama2-7b": 6_738_415_616, "llama2-13b": 13_015_864_320, "llama2-70b": 68_976_648_192}


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("method", ["rep", "adp"])
@pytest.mark.parametrize("train_norms", [True, False])
def test_counts_match_reference_table(name, method, train_norms):
    model = meta_model(load_model_config(name))
    _, base_total = count_parameters(model)
    assert base_total == TOTAL_BASE[name]
    inject(model, LorettaConfig(method=method, train_norms=train_norms))
    trainable, total = count_parameters(model)
    rep, adp, norms = EXPECTED[name]
    adapter = rep if method == "rep" else adp
    assert trainable == adapter + (norms if train_norms else 0)
    assert total == base_total + adapter
    assert all(p.device.type == "meta" for p in model.parameters())
