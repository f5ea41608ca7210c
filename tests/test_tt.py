"""Tensor-train maths: mode shapes for any size, overrides, contraction layout."""
import math

import pytest
import torch

from loretta_ds.tt import TTFactorMatrix, factorize, modes_for, reference_modes, split_cores, tt_numel, tt_to_dense


@pytest.mark.parametrize("size", [11008 * 8, 13824 * 8, 28672 * 8, 2048 * 8, 3072 * 8, 5120 * 3,
                                  5120 * 7, 43, 43 * 8, 11008 * 64, 28672 * 64, 97 * 89, 1, 2])
def test_factorize_product_equals_size(size):
    modes = factorize(size)
    assert math.prod(modes) == size
    assert all(m >= 1 for m in modes)


def test_factorize_keeps_modes_small_for_llama_widths():
    modes = factorize(11008 * 8)
    assert 43 in modes  # the prime cannot be split
    assert max(m for m in modes if m != 43) <= 16
    assert len(modes) >= 4


def test_reference_table_used_and_inconsistent_entries_dropped():
    assert modes_for(4096, 8) == [16, 16, 8, 4, 4]
    assert modes_for(8, 4096) == [16, 16, 8, 4, 4]
    # The reference's (k=32, d=4096) entry multiplies to half of 4096 * 32: never used.
    assert reference_modes(4096, 32) is None
    assert math.prod(modes_for(4096, 32)) == 4096 * 32


def test_override_honoured_and_checked():
    assert modes_for(64, 8, [8, 8, 8]) == [8, 8, 8]
    with pytest.raises(ValueError, match="multiply to 256"):
        modes_for(64, 8, [4, 8, 8])
    with pytest.raises(ValueError, match=">= 1"):
        modes_for(64, 8, [0, 8])


def test_dense_layout_is_row_major_left_to_right():
    tt = TTFactorMatrix(6, 4, tensor_rank=3, modes=[2, 3, 4])
    tt.reset_reference_()
    cores = [c.detach() for c in tt.cores()]
    full = torch.einsum("aib,bjc,ckd->ijk", *cores).reshape(6, 4)
    assert torch.allclose(tt(), full, atol=1e-6)
    assert torch.allclose(tt_to_dense(cores, 6, 4), full, atol=1e-6)


def test_reference_init_statistics():
    torch.manual_seed(0)
    d_in, d_out = 768, 64
    tt = TTFactorMatrix(d_in, d_out, tensor_rank=5)
    stds = []
    for _ in range(20):
        tt.reset_reference_()
        stds.append(tt().std().item())
    # The reference's init targets entries with std sqrt(1 / (d_in + d_out)).
    target = math.sqrt(1 / (d_in + d_out))
    assert 0.5 * target < sum(stds) / len(stds) < 1.5 * target
    for core in tt.cores():  # each core is randn / sqrt(r_k) * sigma^(1/K)
        expected = target ** (1 / len(tt.core_shapes)) / math.sqrt(core.shape[2])
        assert 0.6 * expected < core.std().item() < 1.4 * expected


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_cores_are_contracted_in_fp32(dtype):
    """Half-precision cores give a half-precision matrix, summed in fp32 (fast GPU kernels, exact
    sums): equal to contracting fp32 copies and rounding once, which a half-precision chain is not."""
    torch.manual_seed(0)
    tt = TTFactorMatrix(4096, 8, 5, dtype=dtype)
    tt.reset_reference_()
    dense = tt()
    assert dense.dtype == dtype and dense.shape == (4096, 8)
    fp32_once = tt_to_dense([c.float() for c in tt.cores()], 4096, 8).to(dtype)
    assert torch.equal(dense, fp32_once)
    assert not torch.equal(tt_to_dense(tt.cores(), 4096, 8), fp32_once)  # what a half chain gives
    dense.float().sum().backward()
    assert tt.tt_cores.grad is not None and tt.tt_cores.grad.dtype == dtype


def test_cores_are_views_of_one_flat_parameter():
    """One trainable tensor per TT matrix (ZeRO-3 pays per tensor), cut into cores in order:
    writes through a core land in the flat parameter, and gradients reach each core's slice."""
    tt = TTFactorMatrix(768, 8, tensor_rank=5)
    assert [name for name, _ in tt.named_parameters()] == ["tt_cores"]
    assert tt.tt_cores.numel() == tt_numel(tt.modes, 5)
    assert [tuple(c.shape) for c in tt.cores()] == tt.core_shapes
    tt.reset_reference_()
    tt.zero_last_core_()
    last = tt.core_shapes[-1][0] * tt.core_shapes[-1][1] * tt.core_shapes[-1][2]
    assert torch.count_nonzero(tt.tt_cores[-last:]) == 0 and torch.count_nonzero(tt.tt_cores[:-last]) > 0
    assert torch.count_nonzero(tt()) == 0  # a zero core makes the matrix zero
    tt().sum().backward()
    assert torch.count_nonzero(tt.tt_cores.grad[-last:]) > 0  # only the zero core gets a gradient
    assert torch.count_nonzero(tt.tt_cores.grad[:-last]) == 0
    with pytest.raises(ValueError, match="580 values"):
        split_cores(torch.zeros(579), tt.core_shapes)

