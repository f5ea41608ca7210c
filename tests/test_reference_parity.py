"""Parity with the reference implementation (PyPI loretta==0.1.0) on a hidden-768 LLaMA.

The reference initializes its cores randomly; we copy them into our layers and require the same
logits, which pins down the core layout, contraction order, scaling and adapter placement.
"""
import copy
import re
import warnings

import pytest
import torch

from loretta_ds import LorettaConfig, inject

from tiny_models import tiny_llama

loretta_ref = pytest.importorskip("loretta")


def _our_tensor(ours, ref_name: str) -> torch.Tensor | None:
    """Our tensor for a reference parameter: a core (a view into its matrix's flat parameter) or a bias."""
    name = ref_name.removeprefix("base_model.model.")
    for ref_part, our_part in (("lora_A", "loretta_A"), ("lora_B", "loretta_B"),
                               ("adapter_down", "loretta_down"), ("adapter_up", "loretta_up")):
        match = re.fullmatch(rf"(.*)\.{ref_part}\.layer\.(tensor\.factors\.(\d+)|bias)", name)
        if match:
            if match.group(2) == "bias":
                return ours.get_parameter(f"{match.group(1)}.{our_part}_bias")
            return ours.get_submodule(f"{match.group(1)}.{our_part}").cores()[int(match.group(3))]
    return None


def _copy_reference_adapter(ref_model, ours) -> int:
    copied = 0
    with torch.no_grad():
        for ref_name, ref_param in ref_model.named_parameters():
            our_tensor = _our_tensor(ours, ref_name)
            if our_tensor is not None:
                assert our_tensor.shape == ref_param.shape, ref_name
                our_tensor.copy_(ref_param)
                copied += 1
    return copied


@pytest.mark.parametrize("method", ["rep", "adp"])
def test_logits_match_reference(method):
    base = tiny_llama(hidden=768, layers=2, intermediate=1024, heads=12)
    if method == "rep":
        ref_cfg = loretta_ref.LorettaRepConfig(r=8, tensor_rank=5, lora_alpha=16, lora_dropout=0.0,
                                               target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        our_cfg = LorettaConfig(method="rep", r=8, tensor_rank=5, alpha=16, init="reference")
        expected_tensors = 2 * 2 * 2 * 4  # layers x modules x factors x cores
    else:
        ref_cfg = loretta_ref.LorettaAdpConfig(bottleneck_size=64, non_linearity="relu", tensor_rank=5,
                                               target_modules=["gate_proj", "up_proj", "down_proj"],
                                               task_type="CAUSAL_LM")
        our_cfg = LorettaConfig(method="adp", bottleneck=64, tensor_rank=5, init="reference")
        expected_tensors = 2 * 3 * 2 * (5 + 1)  # layers x adapters x factors x (cores + bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_model = loretta_ref.get_peft_model(copy.deepcopy(base), ref_cfg).eval()
    ours = inject(copy.deepcopy(base), our_cfg).eval()
    assert _copy_reference_adapter(ref_model, ours) == expected_tensors

    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_logits = ref_model(input_ids=ids).logits
        our_logits = ours(input_ids=ids).logits
        base_logits = base(input_ids=ids).logits
    assert (ref_logits - base_logits).abs().max() > 1e-4  # the adapter really does something
    assert (our_logits - ref_logits).abs().max() <= 1e-5
