"""The CPU bf16 input gradient of frozen linear layers (loretta_ds.frozen_linear): the same gradients as
PyTorch's own backward, for frozen layers only."""
import pytest
import torch
from torch import nn

from loretta_ds.frozen_linear import MATVEC_ROWS, reroute_frozen_bf16_linears


def gradients(layer: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = x.clone().requires_grad_()
    layer(x).float().square().sum().backward()
    return x.grad, layer.weight.grad


@pytest.mark.parametrize("tokens", [3, MATVEC_ROWS + 5])  # the matrix-vector path and the float32 blocks
def test_rerouted_frozen_layer_gives_the_stock_input_gradient(tokens):
    torch.manual_seed(0)
    layer = nn.Linear(96, 2100, bias=True).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(2, tokens, 96, dtype=torch.bfloat16)
    stock, _ = gradients(layer, x)
    assert reroute_frozen_bf16_linears(nn.Sequential(layer)) == 1
    rerouted, _ = gradients(layer, x)
    reference = (2 * (x.float() @ layer.weight.float().t() + layer.bias.float())).bfloat16().float() \
        @ layer.weight.float()
    assert rerouted.shape == stock.shape == x.shape and rerouted.dtype == torch.bfloat16
    # Both round the same float32 product to bf16; only the summation order differs.
    scale = reference.abs().max()
    assert (rerouted.float() - reference).abs().max() <= 1e-2 * scale
    assert (rerouted.float() - stock.float()).abs().max() <= 1e-2 * scale


def test_trainable_or_float32_layers_keep_the_stock_backward():
    torch.manual_seed(0)
    trained = nn.Linear(8, 4).to(torch.bfloat16)
    fp32 = nn.Linear(8, 4).requires_grad_(False)
    reroute_frozen_bf16_linears(nn.Sequential(trained, fp32))
    _, weight_grad = gradients(trained, torch.randn(3, 8, dtype=torch.bfloat16))
    assert weight_grad is not None and weight_grad.abs().sum() > 0  # the weight still learns
    x = torch.randn(3, 8)
    rerouted, _ = gradients(fp32, x)
    assert torch.equal(rerouted, 2 * (x @ fp32.weight.t() + fp32.bias) @ fp32.weight)
