"""The native row L1 kernel behind the "l1" criterion, against a float64 reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pyprune import _C
from pyprune.criteria.magnitude import _l1_rows, filter_norms


def _native(x: torch.Tensor, threads: int = 2) -> torch.Tensor:
    out = x.new_empty(x.shape[0])
    code = {torch.float32: 0, torch.float64: 1}[x.dtype]
    _C.row_abs_sum_many([(x.data_ptr(), code, x.shape[0], x.shape[1], x.stride(0),
                          out.data_ptr())], threads)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (64, 27), (17, 4609), (300, 4000)])
def test_row_abs_sum_is_the_float64_sum_rounded_once(dtype, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=dtype) * torch.logspace(-20, 20, shape[1], dtype=dtype)
    ref = x.double().abs().sum(1)
    got = _native(x)
    assert got.dtype == dtype
    if dtype == torch.float32:
        assert torch.equal(got, ref.float())  # one rounding of an (almost) exact sum
    else:
        torch.testing.assert_close(got, ref, rtol=1e-14, atol=0)


def test_row_abs_sum_edge_cases():
    x = torch.zeros(4, 9)
    assert torch.equal(_native(x), torch.zeros(4))
    x = torch.full((2, 5), -3.0)
    assert torch.equal(_native(x, threads=1), torch.full((2,), 15.0))
    wide = torch.randn(8, 20)[:, 3:14]  # rows with a stride larger than their length
    assert torch.equal(_native(wide), wide.double().abs().sum(1).float())
    huge = torch.full((2, 3), 3e38)  # the float64 sum does not overflow; the float32 result does
    assert torch.isinf(_native(huge)).all()
    tiny = torch.full((1, 1000), 1e-45)  # float32 denormals: summed in float64, exactly
    assert float(_native(tiny)) == float(torch.tensor(1000 * float(tiny[0, 0]), dtype=torch.float32))
    assert float(_native(tiny)) > 1e-43
    with pytest.raises(ValueError, match="dtype"):
        _C.row_abs_sum_many([(x.data_ptr(), 7, 4, 9, 9, x.data_ptr())], 1)


def test_l1_rows_uses_torch_where_the_kernel_does_not_apply():
    torch.manual_seed(0)
    w = torch.randn(70, 3000)
    cols = w.t()  # rows not contiguous
    torch.testing.assert_close(_l1_rows(cols), cols.abs().sum(1))
    half = torch.randn(5, 6).half()  # a dtype the kernel does not take
    torch.testing.assert_close(_l1_rows(half), half.abs().sum(1))
    assert _l1_rows(torch.randn(0, 4)).shape == (0,)


def test_filter_norms_of_a_channels_last_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3).to(memory_format=torch.channels_last)
    s = filter_norms(nn.Sequential(conv), 1.0)["0"]
    assert torch.equal(s, conv.weight.detach().double().abs().sum((1, 2, 3)).float())


def _reference_l1(m: nn.Module) -> torch.Tensor:
    w = m.weight.detach().double()
    if isinstance(m, nn.ConvTranspose2d):
        w = w.transpose(0, 1)
    return w.reshape(w.shape[0], -1).abs().sum(1)


@pytest.mark.parametrize("threads", [1, 2])
def test_filter_norms_batches_layers_exactly(threads):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3).double(), nn.ConvTranspose2d(8, 6, 2),
        nn.Conv2d(6, 16, 3).to(memory_format=torch.channels_last), nn.Conv2d(16, 4, 1).half(),
        nn.Conv2d(256, 256, 3), nn.Conv2d(256, 512, 3),  # 1.8M weights: the threaded path
        nn.Flatten(), nn.Linear(40, 10))
    import pyprune.ops as ops

    ops.set_num_threads(threads)
    try:
        s = filter_norms(model, 1.0)
    finally:
        ops.set_num_threads(None)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    assert list(s) == [n for n, _ in layers]  # the model's order
    for n, m in layers:
        ref = _reference_l1(m)
        got = s[n]
        if m.weight.dtype == torch.float16:  # summed by torch in float32
            torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0)
        else:
            assert got.dtype == m.weight.dtype and torch.equal(got, ref.to(got.dtype)), n


@pytest.mark.parametrize("threads", [1, 2])
def test_row_abs_sum_many_mixed_jobs(threads):
    # one native call: float32 and float64 jobs, a job without rows, rows without
    # columns, strided rows, and enough values (> 1M) for the threaded split by values
    torch.manual_seed(0)
    mats = [torch.randn(7, 3), torch.randn(0, 5), torch.randn(4, 0),
            torch.randn(300, 2500, dtype=torch.float64), torch.randn(40, 30)[:, 5:25],
            torch.randn(1000, 700), torch.randn(3, 1, dtype=torch.float64)]
    outs = [m.new_empty(m.shape[0]) for m in mats]
    specs = [(m.data_ptr(), 0 if m.dtype == torch.float32 else 1, m.shape[0], m.shape[1],
              m.stride(0) if m.shape[0] > 1 else m.shape[1], o.data_ptr())
             for m, o in zip(mats, outs)]
    _C.row_abs_sum_many(specs, threads)
    for m, o in zip(mats, outs):
        ref = m.double().abs().sum(1)
        assert torch.equal(o, ref.to(o.dtype)) if o.dtype == torch.float32 else \
            torch.allclose(o, ref, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="spec 1"):
        _C.row_abs_sum_many([specs[0], (0, 5, 1, 1, 1, 0)], 1)
