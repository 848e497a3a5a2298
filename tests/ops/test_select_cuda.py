"""pyprune.ops.select_channels_ / select_channels on CUDA: the native one-launch
compaction gives exactly what index_select (and the CPU kernel) gives.

The cpu cases run everywhere; the cuda cases need a GPU (marker ``cuda``,
skipped without one).
"""
import pytest
import torch

from pyprune import _C
from pyprune.ops import select_channels, select_channels_
from pyprune.ops import select as select_mod

HAS_CUDA = torch.cuda.is_available()
needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
NAME = lambda dtype: str(dtype).replace("torch.", "")  # noqa: E731
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int64,
          torch.bool, torch.complex64, torch.complex128]


def ref_select(t, selections):
    """selections: [(dim, keep, block)] applied with index_select on a CPU copy."""
    out = t.detach().cpu()
    for dim, keep, block in selections:
        idx = torch.as_tensor(keep, dtype=torch.int64)
        if block > 1:
            idx = (idx[:, None] * block + torch.arange(block)).reshape(-1)
        out = out.index_select(dim, idx)
    return out


def rand(shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        t = torch.rand(shape, generator=gen) > 0.5
    elif dtype.is_complex:
        t = torch.randn(shape, dtype=dtype, generator=gen)
    elif dtype.is_floating_point:
        t = torch.randn(shape, generator=gen).to(dtype)
    else:
        t = torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=gen).to(dtype)
    return t.to(device)


def model_tensors(device, dtype=torch.float32):
    conv1 = rand((16, 3, 3, 3), dtype, device, 1)
    bn_w, bn_b = rand((16,), dtype, device, 2), rand((16,), dtype, device, 3)
    bn_mean, bn_var = rand((16,), dtype, device, 4), rand((16,), dtype, device, 5)
    conv2 = rand((8, 16, 3, 3), dtype, device, 6)
    fc = rand((10, 16 * 4 * 4), dtype, device, 7)  # flattened 16 x 4 x 4 map
    return conv1, bn_w, bn_b, bn_mean, bn_var, conv2, fc


KEEP = [0, 2, 3, 7, 8, 15]


def pairs_of(ts):
    conv1, bn_w, bn_b, bn_mean, bn_var, conv2, fc = ts
    return [(conv1, 0), (bn_w, 0), (bn_b, 0), (bn_mean, 0), (bn_var, 0), (conv2, 1), (fc, 1, 16)]


def expected(ts):
    conv1, bn_w, bn_b, bn_mean, bn_var, conv2, fc = ts
    sel0 = [(0, KEEP, 1)]
    return [ref_select(conv1, sel0)] + [ref_select(t, sel0) for t in (bn_w, bn_b, bn_mean, bn_var)] + [
        ref_select(conv2, [(1, KEEP, 1)]), ref_select(fc, [(1, KEEP, 16)])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=NAME)
def test_conv_bn_linear_in_place_one_call(device, dtype):
    ts = model_tensors(device, dtype)
    want = expected(ts)
    ptrs = [t.data_ptr() for t in ts]
    out = select_channels_(pairs_of(ts), KEEP)
    for t, w, p in zip(out, want, ptrs):
        assert t.device.type == device and t.is_contiguous()
        assert t.data_ptr() == p, "in-place compaction keeps the storage"
        assert torch.equal(t.cpu(), w)


@pytest.mark.parametrize("device", DEVICES)
def test_conv_bn_linear_out_of_place(device):
    ts = model_tensors(device)
    before = [t.clone() for t in ts]
    want = expected(ts)
    out = select_channels(pairs_of(ts), KEEP)
    for t, w in zip(out, want):
        assert t.device.type == device and torch.equal(t.cpu(), w)
    for t, b in zip(ts, before):
        assert torch.equal(t, b)


@pytest.mark.parametrize("device", DEVICES)
def test_same_tensor_two_dims_and_channels_last(device):
    w = rand((12, 10, 3, 3), torch.float32, device).contiguous(memory_format=torch.channels_last)
    k0, k1 = [1, 4, 5, 11], [0, 3, 9]
    want = ref_select(w, [(0, k0, 1), (1, k1, 1)])
    (got,) = select_channels([(w, 0), (w, 1)], [k0, k1])[:1]
    assert torch.equal(got.cpu(), want) and got.is_contiguous(memory_format=torch.channels_last)
    out = select_channels_([(w, 0), (w, 1)], [k0, k1])
    assert torch.equal(out[0].cpu(), want) and out[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=NAME)
def test_dtypes_multi_job(device, dtype):
    """Many tensors with per-pair keeps in one call (one launch on CUDA)."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(7, 5, 3), (33,), (4, 9, 2, 2), (64, 3), (5, 130)]
    ts = [rand(s, dtype, device, i) for i, s in enumerate(shapes)]
    dims = [1, 0, 1, 0, 1]
    keeps = [sorted(torch.randperm(t.shape[d], generator=gen)[: max(1, t.shape[d] // 2)].tolist())
             for t, d in zip(ts, dims)]
    want = [ref_select(t, [(d, k, 1)]) for t, d, k in zip(ts, dims, keeps)]
    got = select_channels(list(zip(ts, dims)), keeps)
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))
    got_ = select_channels_(list(zip(ts, dims)), keeps)
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got_, want))


@pytest.mark.parametrize("device", DEVICES)
def test_unaligned_and_strided_out_of_place(device):
    base = rand((3 * 11 * 7 + 1,), torch.uint8, device)
    t = base[1:].view(3, 11, 7)  # storage offset 1: byte-sized copy units
    keep = [0, 5, 10]
    assert torch.equal(select_channels([(t, 1)], keep)[0].cpu(), ref_select(t, [(1, keep, 1)]))
    x = rand((6, 20, 9), torch.float32, device)[::2, :, 1:].transpose(0, 2)  # non-dense
    keep = [1, 2, 19]
    assert torch.equal(select_channels([(x, 1)], keep)[0].cpu(), ref_select(x, [(1, keep, 1)]))


@pytest.mark.parametrize("device", DEVICES)
def test_identity_and_empty_keep(device):
    w = rand((6, 4, 3, 3), torch.float32, device)
    want = w.clone()
    select_channels_([(w, 0)], list(range(6)))
    assert torch.equal(w, want)
    select_channels_([(w, 1)], [])
    assert w.shape == (6, 0, 3, 3)
    e = torch.empty(0, 5, device=device)
    assert select_channels_([(e, 1)], [1, 2])[0].shape == (0, 2)


@pytest.mark.parametrize("device", DEVICES)
def test_large_tensor(device):
    """~32 MB: many blocks per job on CUDA."""
    w = rand((512, 256, 8, 8), torch.float32, device)
    gen = torch.Generator().manual_seed(9)
    k0 = sorted(torch.randperm(512, generator=gen)[:300].tolist())
    k1 = sorted(torch.randperm(256, generator=gen)[:100].tolist())
    want = ref_select(w, [(0, k0, 1), (1, k1, 1)])
    select_channels_([(w, 0), (w, 1)], [k0, k1])
    assert torch.equal(w.cpu(), want)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_identical_to_cpu_and_native():
    assert hasattr(_C, "select_cuda"), "this build has no CUDA kernels"
    assert select_mod._native_cuda(torch.device("cuda", torch.cuda.current_device()))
    cpu = model_tensors("cpu")
    gpu = [t.cuda() for t in cpu]
    a = select_channels_(pairs_of(cpu), KEEP)
    b = select_channels_(pairs_of(gpu), KEEP)
    for x, y in zip(a, b):
        assert x.shape == y.shape and x.stride() == y.stride() and torch.equal(x, y.cpu())


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_side_stream():
    w = rand((64, 32, 3, 3), torch.float32, "cuda")
    want = ref_select(w, [(0, KEEP, 1)])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        select_channels_([(w, 0)], KEEP)
    side.synchronize()
    assert torch.equal(w.cpu(), want)
