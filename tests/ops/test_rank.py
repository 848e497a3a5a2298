"""pyprune.ops.matrix_rank against a float64 SVD reference.

Contract under test: ranks equal #{sigma > tol} of a float64 SVD of the same
values, tol = max(atol, rtol * sigma_max) with torch.linalg.matrix_rank's
defaults, for every matrix whose singular values all lie >= 1% (relative)
away from tol.  Matrices outside that margin are not compared (and are rare).
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import pyprune
from pyprune.ops import matrix_rank

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def reference(x: torch.Tensor, atol=None, rtol=None):
    """(ranks, comparable) from a float64 SVD of x's values."""
    m, n = x.shape[-2:]
    eps = torch.finfo(x.dtype).eps
    if atol is None and rtol is None:
        atol, rtol = 0.0, eps * max(m, n)
    elif rtol is None:
        rtol = 0.0 if atol > 0 else eps * max(m, n)
    elif atol is None:
        atol = 0.0
    s = torch.linalg.svdvals(x.detach().cpu().to(torch.float64))
    smax = s.amax(dim=-1) if s.shape[-1] else torch.zeros(s.shape[:-1], dtype=torch.float64)
    tol = torch.clamp(rtol * smax, min=atol)
    ranks = (s > tol[..., None]).sum(-1)
    gap = (s - tol[..., None]).abs() >= 0.01 * tol[..., None]
    comparable = gap.all(-1) & (tol > 0)
    return ranks, comparable


def known_rank(batch, m, n, r, *, dtype, scale=1.0, gen=None, spread=0.9):
    """U diag(s) V^T with r singular values in scale * [1 - spread, 1]."""
    gen = gen or torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(batch, m, m, dtype=torch.float64, generator=gen))[0][..., :r]
    v = torch.linalg.qr(torch.randn(batch, n, n, dtype=torch.float64, generator=gen))[0][..., :r]
    s = 1.0 - spread * torch.rand(batch, r, dtype=torch.float64, generator=gen)
    return ((u * s[:, None, :]) @ v.transpose(-1, -2) * scale).to(dtype)


def assert_matches_reference(x, atol=None, rtol=None, min_fraction=0.5):
    got = matrix_rank(x, atol=atol, rtol=rtol)
    ref, ok = reference(x, atol, rtol)
    assert got.dtype == torch.int64 and got.shape == x.shape[:-2]
    assert torch.equal(got[ok], ref[ok]), (got[ok], ref[ok])
    assert ok.float().mean() >= min_fraction, "too few matrices away from tol to be compared"
    return got


# --------------------------------------------------------------------------- properties

@st.composite
def rank_cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    m = draw(st.one_of(st.integers(1, 40), st.sampled_from([56, 64, 112, 224])))
    n = draw(st.one_of(st.integers(1, 40), st.sampled_from([56, 64, 112, 224])))
    if m * n > 64 * 64:  # keep big cases rare and cheap
        n = draw(st.integers(1, 12))
    r = draw(st.integers(0, min(m, n)))
    lo, hi = {torch.float16: (-2, 2), torch.bfloat16: (-30, 30)}.get(dtype, (-30, 30))
    scale = 10.0 ** draw(st.integers(lo, hi))
    batch = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    return dtype, m, n, r, scale, batch, seed


@given(rank_cases())
@settings(max_examples=300)
def test_known_rank_property(case):
    dtype, m, n, r, scale, batch, seed = case
    gen = torch.Generator().manual_seed(seed)
    if r == 0:
        x = torch.zeros(batch, m, n, dtype=dtype)
    else:
        x = known_rank(batch, m, n, r, dtype=dtype, scale=scale, gen=gen)
    got = matrix_rank(x)
    ref, ok = reference(x)
    assert torch.equal(got[ok], ref[ok])
    if r == 0:
        assert torch.equal(got, torch.zeros(batch, dtype=torch.int64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n", [(1, 1), (1, 7), (9, 1), (2, 3), (8, 8), (16, 16), (13, 29), (32, 32),
                                 (56, 56), (100, 37), (112, 112), (224, 224)])
def test_exact_known_ranks(dtype, m, n):
    """Singular values in [0.1, 1] or exactly 0: every matrix is far from tol."""
    k = min(m, n)
    batch = 3 if m * n >= 112 * 112 else 6
    for r in sorted({0, 1, k // 2, k}):
        x = known_rank(batch, m, n, r, dtype=dtype) if r else torch.zeros(batch, m, n, dtype=dtype)
        got = matrix_rank(x)
        ref, _ = reference(x)
        if dtype in (torch.float32, torch.float64):
            assert torch.equal(got, torch.full((batch,), r)), (r, got)
        assert torch.equal(got, ref)


# --------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_and_constant_maps(dtype):
    x = torch.zeros(4, 3, 9, 11, dtype=dtype)
    assert torch.equal(matrix_rank(x), torch.zeros(4, 3, dtype=torch.int64))
    x[1, 2] = 0.75
    x[3, 0] = -5.0
    expect = torch.zeros(4, 3, dtype=torch.int64)
    expect[1, 2] = expect[3, 0] = 1
    assert torch.equal(matrix_rank(x), expect)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_sparse_maps(dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(8, 16, 14, 14, generator=gen) - 1.0)  # ~84% zeros, dead rows/cols
    x[:, :4, :, 5:] = 0  # structured dead region: rank <= 5
    assert_matches_reference(x.to(dtype), min_fraction=0.9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1.0, 1e12, 1e30])
def test_extreme_scales(dtype, scale):
    # singular values in [0.5, 1] * scale: above even bfloat16's tol (0.16 * sigma_max)
    x = known_rank(6, 20, 12, 7, dtype=dtype, scale=scale, spread=0.5)
    got = assert_matches_reference(x, min_fraction=1.0)
    assert torch.equal(got, torch.full((6,), 7))


def test_float64_extreme_range():
    for scale in (1e-300, 1e300):
        x = known_rank(4, 10, 10, 6, dtype=torch.float64, scale=scale)
        assert torch.equal(matrix_rank(x), torch.full((4,), 6))


def test_float32_subnormal_and_huge_entries():
    x = known_rank(4, 12, 12, 5, dtype=torch.float32, scale=1e-40)  # subnormal float32 values
    assert_matches_reference(x, min_fraction=0.5)
    y = known_rank(4, 12, 12, 5, dtype=torch.float64, scale=3e38).to(torch.float32)
    assert torch.equal(matrix_rank(y), torch.full((4,), 5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_and_channels_last(dtype):
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(4, 6, 10, 12, generator=gen)
    base[:, ::2, :, 6:] = base[:, ::2, :, :6]  # rank <= 6 on even channels
    x = base.to(dtype)
    expect = matrix_rank(x.contiguous())
    cl = x.to(memory_format=torch.channels_last)
    assert not cl.is_contiguous()
    assert torch.equal(matrix_rank(cl), expect)
    t = x.transpose(-1, -2)  # transposed matrices have the same rank
    assert torch.equal(matrix_rank(t), expect)
    perm = x.permute(1, 0, 2, 3)
    assert torch.equal(matrix_rank(perm), expect.t())
    stepped = torch.randn(4, 12, 20, 24, generator=gen).to(dtype)[:, ::2, ::2, ::2]
    assert torch.equal(matrix_rank(stepped), matrix_rank(stepped.contiguous()))
    assert_matches_reference(stepped, min_fraction=0.9)


def test_many_batch_dims_and_broadcast_strides():
    x = known_rank(1, 5, 4, 2, dtype=torch.float32).expand(3, 2, 5, 4)  # stride-0 batch dims
    assert torch.equal(matrix_rank(x), torch.full((3, 2), 2))
    y = torch.randn(*([1] * 20), 2, 3, 5, 5)
    assert matrix_rank(y).shape == y.shape[:-2]
    assert torch.equal(matrix_rank(y).reshape(-1), matrix_rank(y.reshape(-1, 5, 5)))


def test_numpy_in_numpy_out():
    x = known_rank(3, 8, 6, 4, dtype=torch.float64).numpy()
    got = matrix_rank(x)
    assert isinstance(got, np.ndarray) and got.dtype == np.int64
    assert got.tolist() == [4, 4, 4]
    neg = x[:, ::-1, :]  # negative strides
    assert matrix_rank(neg).tolist() == [4, 4, 4]
    assert matrix_rank(x.astype(np.float32)).tolist() == [4, 4, 4]
    assert matrix_rank(x.astype(">f8")).tolist() == [4, 4, 4]  # non-native byte order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("atol,rtol", [(None, None), (0.5, None), (0.0, None), (None, 0.3), (0.2, 0.1),
                                       (0.0, 0.0), (2.0, None)])
def test_tolerance_rule_matches_torch(dtype, atol, rtol):
    gen = torch.Generator().manual_seed(3)
    u = torch.linalg.qr(torch.randn(32, 9, 9, dtype=torch.float64, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(32, 7, 7, dtype=torch.float64, generator=gen))[0]
    s = torch.tensor([1.7, 1.0, 0.8, 0.45, 0.27, 0.15, 0.07], dtype=torch.float64)
    x = (u[..., :7] * s) @ v.transpose(-1, -2)
    x = x.to(dtype)
    kw = {k: v for k, v in (("atol", atol), ("rtol", rtol)) if v is not None}
    got = matrix_rank(x, atol=atol, rtol=rtol)
    ref, ok = reference(x, atol, rtol)
    assert torch.equal(got[ok], ref[ok])
    if (atol, rtol) != (0.0, 0.0):
        assert ok.all()
        assert torch.equal(got, torch.linalg.matrix_rank(x, **kw))


def _smallest_at(batch, n, ratio, tol, gen):
    """n x n float64 matrices with sigma_max = 1 and sigma_min = ratio * tol."""
    u = torch.linalg.qr(torch.randn(batch, n, n, dtype=torch.float64, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(batch, n, n, dtype=torch.float64, generator=gen))[0]
    s = torch.rand(batch, n, dtype=torch.float64, generator=gen) * 0.5 + 0.25
    s[:, 0], s[:, -1] = 1.0, ratio * tol
    return (u * s[:, None, :]) @ v.transpose(-1, -2)


@pytest.mark.parametrize("n", [3, 8, 32, 57])
def test_full_rank_shortcut_at_the_threshold(n):
    """The CPU kernel settles full-rank groups of matrices without reducing
    them to tridiagonal form (a shifted Cholesky test).  Smallest singular
    values 3% above tol must give rank n, 3% below must give n - 1, and
    neither may be decided by the shortcut wrongly; all-full-rank and mixed
    groups of four, float32 input (values exact in float32 up to 1e-7, far
    inside the 3%)."""
    gen = torch.Generator().manual_seed(n)
    tol = 1e-2
    above = _smallest_at(8, n, 1.03, tol, gen)
    below = _smallest_at(8, n, 0.97, tol, gen)
    x = torch.cat([above, below, above[:2], below[:2], above[2:4]]).to(torch.float32)
    expect = torch.tensor([n] * 8 + [n - 1] * 8 + [n] * 2 + [n - 1] * 2 + [n] * 2)
    assert torch.equal(reference(x, rtol=tol)[0], expect)
    for threads in (1, 2):
        assert torch.equal(matrix_rank(x, rtol=tol, threads=threads), expect)
        assert torch.equal(matrix_rank(x, atol=tol, threads=threads), expect)  # sigma_max = 1


def _with_zero_lines(base, zero_cols, zero_rows, gen):
    """base (batch, m, n) with zero_cols[b] random columns and zero_rows[b] random rows of
    matrix b set to exactly zero; the non-zero part keeps base's values."""
    x = base.clone()
    batch, m, n = x.shape
    for b in range(batch):
        x[b, :, torch.randperm(n, generator=gen)[:int(zero_cols[b])]] = 0
        x[b, torch.randperm(m, generator=gen)[:int(zero_rows[b])], :] = 0
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n", [(8, 8), (16, 16), (32, 32), (24, 9), (9, 24), (1, 5), (33, 2)])
def test_zero_columns_and_rows_set_aside(dtype, m, n):
    """ReLU maps have exactly-zero rows and columns.  The full-rank test sets the
    zero lines of the smaller side aside (rank = the rest's rank when that is full);
    zero lines of the other side, and a rest that is itself deficient, must still go
    to the full path.  Every count of zero lines, lanes of one group with different
    counts, both orientations, three tolerance rules: equal to the float64 SVD."""
    gen = torch.Generator().manual_seed(m * 100 + n)
    batch = 96
    k = min(m, n)
    base = torch.randn(batch, m, n, generator=gen, dtype=torch.float64)
    low = torch.randn(batch, m, 2, generator=gen, dtype=torch.float64) @ \
        torch.randn(batch, 2, n, generator=gen, dtype=torch.float64)
    base[batch // 2:] = low[batch // 2:]  # a deficient rest in the second half
    zc = torch.randint(0, n + 1, (batch,), generator=gen)
    zr = torch.randint(0, m + 1, (batch,), generator=gen)
    zr[::3] = 0  # columns only
    zc[1::3] = 0  # rows only
    x = _with_zero_lines(base, zc, zr, gen).to(dtype)
    expect_le = torch.minimum(n - zc, m - zr).clamp(max=k)
    for atol, rtol in ((None, None), (None, 1e-2), (1e-3, None)):
        got = assert_matches_reference(x, atol=atol, rtol=rtol, min_fraction=0.6)
        assert (got <= expect_le).all()
        for threads in (1, 2):
            assert torch.equal(matrix_rank(x, atol=atol, rtol=rtol, threads=threads), got)
    # Full-rank (Gaussian) rests with only zero columns of the smaller side have a known
    # rank in float32 (in 16-bit floats, tol = eps * max(m, n) is too coarse for that).
    only_cols = (zr == 0) & (torch.arange(batch) < batch // 2) & (zc < n)
    if m >= n and dtype == torch.float32:
        got = matrix_rank(x)
        assert torch.equal(got[only_cols], (n - zc)[only_cols].clamp(max=k))


def test_zero_column_beside_subnormal_columns():
    """A column of float32 subnormals is not a zero column: only exact zeros are set
    aside (their squares, ~1e-90, are far from underflowing in float64)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(12, 10, 10, generator=gen) * 1e-40  # mostly subnormal float32
    x[:, :, 3] = 0
    x[::2, :, 7] = 1.4e-45  # the smallest subnormal, a rank-one column
    ref, ok = reference(x)
    assert ok.all()
    assert torch.equal(matrix_rank(x), ref)
    assert (ref == 9).all()


def test_long_batches_of_full_rank_and_deficient_matrices():
    """A run of groups that fail the full-rank test makes the kernel stop
    trying it for the rest of its range: results must not depend on where
    the full-rank and rank-deficient runs fall."""
    gen = torch.Generator().manual_seed(7)
    full = torch.randn(160, 24, 24, generator=gen)
    low = torch.randn(160, 24, 6, generator=gen) @ torch.randn(160, 6, 24, generator=gen)
    for x in (torch.cat([full, low, full]), torch.cat([low, full, low]), torch.stack([full, low], 1).reshape(-1, 24, 24)):
        ref, ok = reference(x)
        assert ok.all()
        for threads in (1, 2):
            assert torch.equal(matrix_rank(x, threads=threads), ref)


@pytest.mark.parametrize("count", [1, 6, 37, 203])
def test_mixed_batches_zero_full_rank_and_deficient(count):
    """Zero maps (settled as rank 0), full-rank maps (settled by the full-rank
    test) and rank-deficient maps (collected into groups of four across the
    kernel's groups for the full path) in every arrangement, batch sizes that
    leave partial groups: each map gets its own rank, and a NaN map anywhere
    is still the one reported."""
    gen = torch.Generator().manual_seed(count)
    n = 20
    kinds = torch.randint(0, 4, (count,), generator=gen)
    full = torch.randn(count, n, n, generator=gen)
    low = torch.randn(count, n, 3, generator=gen) @ torch.randn(count, 3, n, generator=gen)
    near = known_rank(count, n, n, n - 1, dtype=torch.float64, gen=gen).float()  # rank n - 1
    x = torch.where((kinds == 0)[:, None, None], torch.zeros(()), full)
    x = torch.where((kinds == 2)[:, None, None], low, x)
    x = torch.where((kinds == 3)[:, None, None], near, x)
    ref, ok = reference(x)
    zero = kinds == 0
    assert ok[~zero].float().mean() >= 0.9  # (tol = 0 on zero maps: not comparable)
    for threads in (1, 2):
        got = matrix_rank(x, threads=threads)
        assert torch.equal(got[ok], ref[ok]) and (got[zero] == 0).all()
    bad = count // 2
    x[bad, 1, 2] = float("nan")
    x[-1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=rf"matrix \({bad},\)"):
        matrix_rank(x, threads=2)


def test_threads_do_not_change_results():
    x = torch.randn(37, 20, 17)
    x[::3, :, 9:] = 0
    a = matrix_rank(x, threads=1)
    b = matrix_rank(x, threads=2)
    c = matrix_rank(x, threads=7)
    assert torch.equal(a, b) and torch.equal(a, c)
    pyprune.ops.set_num_threads(1)
    try:
        assert pyprune.ops.get_num_threads() == 1
        assert torch.equal(matrix_rank(x), a)
    finally:
        pyprune.ops.set_num_threads(None)
    assert pyprune.ops.get_num_threads() == torch.get_num_threads()


def test_releases_the_gil():
    import threading
    import time

    x = torch.randn(2048, 64, 64)  # ~50 ms on one thread; a held GIL would allow ~1 tick
    done = []
    t = threading.Thread(target=lambda: done.append(matrix_rank(x, threads=1)))
    ticks = 0
    t.start()
    while t.is_alive():
        ticks += 1  # Python code runs while the kernel works
        time.sleep(0.0005)
    t.join()
    assert done and done[0].shape == (2048,)
    assert ticks >= 10


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_name_first_bad_matrix(dtype):
    x = torch.randn(3, 4, 5, 5).to(dtype)
    x[2, 1, 0, 3] = float("nan")
    x[1, 2, 4, 4] = float("inf")
    with pytest.raises(ValueError, match=r"matrix_rank.*NaN or Inf.*\(1, 2\)"):
        matrix_rank(x)
    y = torch.randn(6, 3, 3, dtype=torch.float64)
    y[4, 0, 0] = -float("inf")
    with pytest.raises(ValueError, match=r"matrix \(4,\)"):
        matrix_rank(y)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64, torch.uint8])
def test_bad_dtypes(dtype):
    with pytest.raises(TypeError, match=f"matrix_rank: x must have dtype float16, bfloat16, float32 or float64, got {dtype}"):
        matrix_rank(torch.zeros(2, 3, 3, dtype=dtype))


def test_bad_arguments():
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray, got list"):
        matrix_rank([[1.0, 2.0]])
    with pytest.raises(TypeError, match="numpy int64"):
        matrix_rank(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"at least 2 dims .*got shape \(5,\)"):
        matrix_rank(torch.zeros(5))
    with pytest.raises(ValueError, match=r"at least 2 dims .*got shape \(\)"):
        matrix_rank(torch.tensor(1.0))
    with pytest.raises(ValueError, match="atol must be finite and >= 0, got -1.0"):
        matrix_rank(torch.zeros(2, 2), atol=-1.0)
    with pytest.raises(ValueError, match="rtol must be finite and >= 0, got nan"):
        matrix_rank(torch.zeros(2, 2), rtol=math.nan)
    with pytest.raises(TypeError, match="atol must be a real number or None, got Tensor"):
        matrix_rank(torch.zeros(2, 2), atol=torch.tensor(0.1))
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        matrix_rank(torch.zeros(2, 2), threads=0)


def test_empty_inputs():
    assert matrix_rank(torch.zeros(0, 3, 4, 4)).shape == (0, 3)
    assert matrix_rank(torch.zeros(0, 4, 4)).dtype == torch.int64
    assert torch.equal(matrix_rank(torch.zeros(2, 0, 3)), torch.zeros(2, dtype=torch.int64))
    assert torch.equal(matrix_rank(torch.zeros(2, 3, 0)), torch.zeros(2, dtype=torch.int64))
    assert matrix_rank(torch.eye(3)).shape == ()
    assert int(matrix_rank(torch.eye(3))) == 3
