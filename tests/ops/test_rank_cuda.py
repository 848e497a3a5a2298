"""pyprune.ops.matrix_rank on CUDA: same contract as on the CPU, identical results.

The cpu cases run everywhere; the cuda cases need a GPU (marker ``cuda``,
skipped without one) and compare the native CUDA kernels with the CPU kernels
on the same inputs, value for value.
"""
import pytest
import torch

from pyprune import _C
from pyprune.ops import matrix_rank
from pyprune.ops import rank as rank_mod

HAS_CUDA = torch.cuda.is_available()
needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
NAME = lambda dtype: str(dtype).replace("torch.", "")  # noqa: E731
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(1, 1), (7, 13), (13, 7), (32, 32), (56, 56), (112, 112), (224, 224), (40, 100)]


def reference(x: torch.Tensor):
    """(ranks, comparable) from a float64 SVD with torch.linalg.matrix_rank's default tol."""
    m, n = x.shape[-2:]
    s = torch.linalg.svdvals(x.detach().cpu().to(torch.float64))
    tol = torch.finfo(x.dtype).eps * max(m, n) * s.amax(dim=-1)
    ranks = (s > tol[..., None]).sum(-1)
    comparable = ((s - tol[..., None]).abs() >= 0.01 * tol[..., None]).all(-1) & (tol > 0)
    return ranks, comparable


def known_rank(batch, m, n, r, *, dtype, scale=1.0, seed=0):
    """U diag(s) V^T with r singular values in scale * [0.1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(batch, m, m, dtype=torch.float64, generator=gen))[0][..., :r]
    v = torch.linalg.qr(torch.randn(batch, n, n, dtype=torch.float64, generator=gen))[0][..., :r]
    s = 1.0 - 0.9 * torch.rand(batch, r, dtype=torch.float64, generator=gen)
    return ((u * s[:, None, :]) @ v.transpose(-1, -2) * scale).to(dtype)


def mixed_ranks(m, n, dtype, batch=None, seed=0):
    """A batch holding several ranks (0, 1, a middle one, full) of one shape."""
    k = min(m, n)
    ranks = sorted({0, 1, k // 2, k})
    batch = batch or len(ranks)
    parts = [known_rank(1, m, n, ranks[i % len(ranks)], dtype=torch.float64, seed=seed + i) for i in range(batch)]
    return torch.cat(parts).to(dtype)


def same_on_cpu_and_cuda(x, **kw):
    cpu = matrix_rank(x.cpu(), **kw)
    gpu = matrix_rank(x.cuda(), **kw)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.int64 and gpu.shape == cpu.shape
    assert torch.equal(cpu, gpu.cpu()), (cpu, gpu.cpu())
    return cpu


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=NAME)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_float64_svd(device, dtype, shape):
    m, n = shape
    x = mixed_ranks(m, n, dtype, batch=2 if m * n > 100 * 100 else None).to(device)
    got = matrix_rank(x)
    ref, ok = reference(x)
    assert got.device == x.device and got.dtype == torch.int64
    assert torch.equal(got.cpu()[ok], ref[ok])
    assert ok.float().mean() >= 0.5


@pytest.mark.parametrize("dtype", DTYPES, ids=NAME)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("cuda", [pytest.param(True, marks=needs_cuda)], ids=[""])
def test_cuda_identical_to_cpu(dtype, shape, cuda):
    m, n = shape
    same_on_cpu_and_cuda(mixed_ranks(m, n, dtype, batch=3 if m * n > 100 * 100 else 8, seed=7))


@pytest.mark.parametrize("dtype", DTYPES, ids=NAME)
@pytest.mark.parametrize("cuda", [pytest.param(True, marks=needs_cuda)], ids=[""])
def test_cuda_identical_to_cpu_random_scales_and_strides(dtype, cuda):
    gen = torch.Generator().manual_seed(3)
    lo, hi = (-2, 2) if dtype == torch.float16 else (-20, 20)
    for m, n in [(5, 9), (24, 24), (31, 33), (64, 17), (65, 65)]:
        scale = 10.0 ** int(torch.randint(lo, hi + 1, (), generator=gen))
        x = (torch.randn(6, m, n, dtype=torch.float64, generator=gen) * scale).to(dtype)
        same_on_cpu_and_cuda(x)
        same_on_cpu_and_cuda(x.transpose(-1, -2))          # column-major matrices
        same_on_cpu_and_cuda(x[::2, ::2, 1:])              # every stride != 1
        same_on_cpu_and_cuda(x[:1].expand(3, m, n))        # batch stride 0


@pytest.mark.parametrize("dtype", DTYPES, ids=NAME)
@pytest.mark.parametrize("cuda", [pytest.param(True, marks=needs_cuda)], ids=[""])
def test_feature_maps_channels_last(dtype, cuda):
    """HRank's input: (N, C, H, W) feature maps, contiguous and channels_last."""
    x = torch.relu(torch.randn(4, 16, 14, 14, dtype=torch.float64)).to(dtype)
    x[:, ::3] = x[:, ::3, :, :1] * x[:, ::3, :1, :]  # some rank-1 maps
    ref = same_on_cpu_and_cuda(x)
    cl = same_on_cpu_and_cuda(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(ref, cl)
    assert (ref[:, ::3] <= 1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_many_matrices_large_batch(device):
    """More matrices than resident blocks: the grid strides over the batch.

    float64 1000 x 30 needs 241 KB per matrix, over every GPU's shared-memory
    limit, so it also runs from the global workspace (2 blocks per SM).
    """
    x = mixed_ranks(1000, 30, torch.float64, batch=20, seed=11)
    x = torch.cat([x] * 16).to(device)  # 320 matrices
    got = matrix_rank(x).cpu()
    ref, ok = reference(x[:20])
    assert torch.equal(got[:20][ok], ref[ok])
    assert torch.equal(got, got[:20].repeat(16))
    y = mixed_ranks(8, 8, torch.float32, batch=5000, seed=1).to(device)
    assert torch.equal(matrix_rank(y).cpu(), matrix_rank(y.cpu()))


@pytest.mark.parametrize("device", DEVICES)
def test_global_workspace_path(device):
    """Per-matrix storage above the shared-memory limit (a few matrices: cheap under compute-sanitizer)."""
    for m, n, dtype in [(1000, 30, torch.float64), (240, 300, torch.float32), (230, 250, torch.bfloat16)]:
        x = mixed_ranks(m, n, dtype, batch=2, seed=m).to(device)
        got = matrix_rank(x)
        ref, ok = reference(x)
        assert torch.equal(got.cpu()[ok], ref[ok]) and bool(ok.any())
        assert torch.equal(got.cpu(), matrix_rank(x.cpu()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=NAME)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_reported(device, dtype, bad):
    x = mixed_ranks(12, 9, dtype, batch=6).reshape(2, 3, 12, 9).to(device)
    x[1, 2, 3, 4] = bad
    x[0, 1, 0, 0] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf in matrix \(0, 1\)"):
        matrix_rank(x)
    got = matrix_rank(x, check_finite=False)
    assert got.device == x.device
    expect = matrix_rank(x.cpu(), check_finite=False)
    assert torch.equal(got.cpu(), expect)
    assert got[0, 1] == -1 and got[1, 2] == -1 and (got.cpu().flatten()[[0, 2, 3, 4]] >= 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_empty(device):
    assert matrix_rank(torch.ones(0, 5, 5, device=device)).shape == (0,)
    out = matrix_rank(torch.ones(3, 0, 4, device=device))
    assert out.device.type == device and torch.equal(out.cpu(), torch.zeros(3, dtype=torch.int64))
    assert matrix_rank(torch.ones(2, 0, 3, 3, device=device)).shape == (2, 0)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_native_kernel_is_used_and_async():
    assert hasattr(_C, "rank_cuda"), "this build has no CUDA kernels"
    dev = torch.device("cuda", torch.cuda.current_device())
    assert rank_mod._native_cuda(dev)
    x = mixed_ranks(32, 32, torch.float32, batch=64).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # runs on the current (side) stream, no host sync needed
        out = matrix_rank(x, check_finite=False)
    side.synchronize()
    assert torch.equal(out.cpu(), matrix_rank(x.cpu()))


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    x = mixed_ranks(20, 30, torch.float32, batch=9)
    out = matrix_rank(x.to("cuda:1"))
    assert out.device == torch.device("cuda:1")
    assert torch.equal(out.cpu(), matrix_rank(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=NAME)
@pytest.mark.parametrize("shape", [(12, 9), (32, 32), (56, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_singular_values_near_tol(device, dtype, shape):
    """A singular value within a factor 1.7 of tol on either side.

    The counts at the ends of the bracket around sigma_max then differ, so
    the kernels must bisect for sigma_max (the shortcut that skips it applies
    only when no singular value lies near the threshold).
    """
    m, n = shape
    gen = torch.Generator().manual_seed(m * n)
    rtol = 0.05 if dtype == torch.bfloat16 else 1e-3
    factors = [0.6, 0.8, 0.95, 1.05, 1.25, 1.7]
    mats = []
    for f in factors:
        u = torch.linalg.qr(torch.randn(m, m, dtype=torch.float64, generator=gen))[0]
        v = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))[0]
        s = torch.zeros(min(m, n), dtype=torch.float64)
        s[:4] = torch.tensor([1.0, 0.7, 0.4, f * rtol], dtype=torch.float64)
        mats.append((u[:, : s.numel()] * s) @ v[:, : s.numel()].T)
    x = torch.stack(mats).to(dtype).to(device)
    got = matrix_rank(x, rtol=rtol).cpu()
    sv = torch.linalg.svdvals(x.cpu().double())
    tol = rtol * sv[:, 0]
    assert ((sv - tol[:, None]).abs() >= 0.01 * tol[:, None]).all()  # every case is inside the contract
    assert torch.equal(got, (sv > tol[:, None]).sum(-1))
    assert torch.equal(got, torch.tensor([3 + (f > 1) for f in factors]))
