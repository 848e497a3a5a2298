"""pyprune.ops.select_channels_ / select_channels against index_select."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pyprune import _C
from pyprune.ops import select as select_mod
from pyprune.ops import select_channels, select_channels_


def ref_select(t, selections):
    """selections: {dim: (keep list, block)} -> index_select reference."""
    out = t
    for d, (keep, block) in selections.items():
        idx = torch.tensor([c * block + j for c in keep for j in range(block)], dtype=torch.int64)
        out = out.index_select(d, idx)
    return out


def snapshot(*ts):
    return [(t.clone(), tuple(t.shape), t.stride(), t.data_ptr()) for t in ts]


def assert_unchanged(ts, snap):
    for t, (val, shape, stride, ptr) in zip(ts, snap):
        assert tuple(t.shape) == shape and t.stride() == stride and t.data_ptr() == ptr
        assert torch.equal(t, val)


# --------------------------------------------------------------------------- layer tensors

def test_conv_bn_linear_in_place_one_call():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 12, 3, bias=True)
    bn = torch.nn.BatchNorm2d(12)
    bn.running_mean.uniform_()
    bn.running_var.uniform_(0.5, 2)
    nxt = torch.nn.Conv2d(12, 5, 3)
    fc = torch.nn.Linear(12 * 4 * 4, 10)  # after flatten of a 12 x 4 x 4 map
    keep = torch.tensor([0, 3, 4, 7, 11])
    expect = {
        "w": ref_select(conv.weight.data, {0: (keep.tolist(), 1)}),
        "b": conv.bias.data[keep].clone(),
        "g": bn.weight.data[keep].clone(),
        "beta": bn.bias.data[keep].clone(),
        "rm": bn.running_mean[keep].clone(),
        "rv": bn.running_var[keep].clone(),
        "nw": nxt.weight.data[:, keep].clone(),
        "fc": ref_select(fc.weight.data, {1: (keep.tolist(), 16)}),
    }
    ptrs = [t.data_ptr() for t in (conv.weight, conv.bias, bn.weight, bn.running_var, nxt.weight, fc.weight)]
    storages = [t.untyped_storage().data_ptr() for t in (conv.weight, nxt.weight, fc.weight)]
    with torch.no_grad():
        out = select_channels_([(conv.weight, 0), (conv.bias, 0), (bn.weight, 0), (bn.bias, 0),
                                (bn.running_mean, 0), (bn.running_var, 0), (nxt.weight, 1),
                                (fc.weight, 1, 16)], keep)
    assert out[0] is conv.weight and out[-1] is fc.weight
    assert isinstance(conv.weight, torch.nn.Parameter) and conv.weight.is_leaf
    assert torch.equal(conv.weight, expect["w"]) and conv.weight.is_contiguous()
    assert torch.equal(conv.bias, expect["b"])
    assert torch.equal(bn.weight, expect["g"]) and torch.equal(bn.bias, expect["beta"])
    assert torch.equal(bn.running_mean, expect["rm"]) and torch.equal(bn.running_var, expect["rv"])
    assert torch.equal(nxt.weight, expect["nw"]) and nxt.weight.is_contiguous()
    assert torch.equal(fc.weight, expect["fc"]) and fc.weight.shape == (10, 80)
    # same storage, same start: compacted in place
    assert [t.data_ptr() for t in (conv.weight, conv.bias, bn.weight, bn.running_var, nxt.weight, fc.weight)] == ptrs
    assert [t.untyped_storage().data_ptr() for t in (conv.weight, nxt.weight, fc.weight)] == storages
    # the compacted layers still train
    conv.out_channels, nxt.in_channels = 5, 5
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    nxt(torch.relu(conv(x))).sum().backward()
    assert conv.weight.grad.shape == conv.weight.shape


def test_same_tensor_two_dims_per_pair_keeps():
    w = torch.randn(16, 10, 3, 3)
    ko, ki = [1, 2, 5, 8, 15], [0, 9]
    expect = ref_select(w, {0: (ko, 1), 1: (ki, 1)})
    b = torch.randn(16)
    select_channels_([(w, 0), (w, 1), (b, 0)], [torch.tensor(ko), ki, ko])
    assert torch.equal(w, expect) and w.shape == (5, 2, 3, 3)
    assert b.shape == (5,)


def test_channels_last_stays_channels_last():
    w = torch.randn(12, 6, 5, 5).to(memory_format=torch.channels_last)
    expect = ref_select(w, {0: ([0, 4, 5, 11], 1), 1: ([1, 2, 3], 1)})
    ptr = w.data_ptr()
    select_channels_([(w, 0), (w, 1)], [[0, 4, 5, 11], [1, 2, 3]])
    assert torch.equal(w, expect)
    assert w.is_contiguous(memory_format=torch.channels_last) and w.data_ptr() == ptr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                   torch.int64, torch.int8, torch.bool, torch.complex64])
def test_dtypes(dtype):
    t = (torch.randn(7, 9, 2) * 10).to(dtype)
    expect = ref_select(t, {1: ([0, 2, 8], 1)})
    select_channels_([(t, 1)], [0, 2, 8])
    assert torch.equal(t, expect)


def test_large_tensor_parallel_waves():
    """Bigger than the parallel threshold, keep ratios that need many waves."""
    g = torch.Generator().manual_seed(0)
    for ratio in (0.1, 0.5, 0.97):
        t = torch.randn(512, 700, generator=g)
        keep = torch.nonzero(torch.rand(700, generator=g) < ratio).reshape(-1)
        expect = t[:, keep].clone()
        select_channels_([(t, 1)], keep, threads=2)
        assert torch.equal(t, expect)
        u = torch.randn(3000, 600, generator=g)
        keep0 = torch.nonzero(torch.rand(3000, generator=g) < ratio).reshape(-1)
        expect0 = u[keep0].clone()
        select_channels_([(u, 0)], keep0, threads=2)
        assert torch.equal(u, expect0)


def _kept(n, ratio, g):
    return torch.nonzero(torch.rand(n, generator=g) < ratio).reshape(-1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("offset", [0, 1, 5, 15, 16])
def test_3x3_float32_kernels_any_alignment(threads, offset):
    """3x3 float32 kernels (36-byte chunks) have a vector path on AVX2 CPUs
    that writes 16 chunks (9 aligned lines) at a time: rows shorter and longer
    than 16 kept kernels, outputs starting at every 4-byte alignment within a
    line (storage offsets), in place and out of place."""
    g = torch.Generator().manual_seed(offset)
    for cin, ratio in ((7, 0.6), (40, 0.5), (100, 0.9), (67, 0.25)):
        shape = (48, cin, 3, 3)
        n = 48 * cin * 9
        base = torch.randn(n + offset, generator=g)
        k0, k1 = _kept(48, 0.7, g), _kept(cin, ratio, g)
        for dims, keeps in (((0, 1), [k0, k1]), ((1,), [k1])):
            w = base[offset:].view(shape)
            expect = ref_select(w, {d: (k.tolist(), 1) for d, k in zip(dims, keeps)})
            out = select_channels([(w, d) for d in dims], keeps, threads=threads)
            assert torch.equal(out[0], expect)
            w = base.clone()[offset:].view(shape)
            ptr = w.data_ptr()
            select_channels_([(w, d) for d in dims], keeps, threads=threads)
            assert torch.equal(w, expect) and w.data_ptr() == ptr


def test_36_byte_chunks_of_other_dtypes_and_odd_addresses():
    """36-byte chunks that are not float32 3x3 kernels, at addresses that are
    not 4-byte aligned (uint8 6x6 maps at an odd storage offset)."""
    g = torch.Generator().manual_seed(1)
    base = torch.randint(0, 255, (1 + 5 * 70 * 36,), dtype=torch.uint8, generator=g)
    k0, k1 = _kept(5, 0.6, g), _kept(70, 0.5, g)
    t = base[1:].view(5, 70, 6, 6)
    expect = ref_select(t, {0: (k0.tolist(), 1), 1: (k1.tolist(), 1)})
    select_channels_([(t, 0), (t, 1)], [k0, k1])
    assert torch.equal(t, expect)
    i = torch.arange(4 * 50 * 9, dtype=torch.int32).view(4, 50, 3, 3)  # int32 3x3: same 36-byte path
    k = _kept(50, 0.5, g)
    expect = i[:, k].clone()
    select_channels_([(i, 1)], k)
    assert torch.equal(i, expect)


@pytest.mark.parametrize("in_place", [True, False])
def test_large_3x3_weight_streaming_stores(in_place):
    """Outputs of 8 MiB and more are written with streaming (non-temporal)
    stores on AVX2 CPUs: the result must be the same, and visible right after
    the call, from every thread's part."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(1024, 768, 3, 3, generator=g)
    k0, k1 = _kept(1024, 0.8, g), _kept(768, 0.75, g)
    expect = w[k0][:, k1].clone()
    assert expect.numel() * 4 >= 8 << 20
    if in_place:
        select_channels_([(w, 0), (w, 1)], [k0, k1], threads=2)
        assert torch.equal(w, expect)
    else:
        out = select_channels([(w, 0), (w, 1)], [k0, k1], threads=2)
        assert torch.equal(out[0], expect)


def test_identity_and_empty_keep():
    t = torch.randn(4, 5)
    before = t.clone()
    select_channels_([(t, 1)], list(range(5)))
    assert torch.equal(t, before)
    select_channels_([(t, 1)], [])
    assert t.shape == (4, 0)
    e = torch.zeros(0, 3)
    select_channels_([(e, 1)], [2])
    assert e.shape == (0, 1)


@st.composite
def selection_cases(draw):
    ndim = draw(st.integers(1, 4))
    shape = [draw(st.integers(1, 7)) for _ in range(ndim)]
    dims = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    sels = {}
    for d in dims:
        block = draw(st.sampled_from([b for b in (1, 2, 3) if shape[d] % b == 0]))
        nch = shape[d] // block
        keep = sorted(draw(st.sets(st.integers(0, nch - 1), max_size=nch)))
        sels[d] = (keep, block)
    fmt = draw(st.sampled_from(["contiguous", "channels_last", "permuted"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.int32, torch.float64]))
    return shape, sels, fmt, dtype


@given(selection_cases())
@settings(max_examples=150)
def test_random_selections_match_index_select(case):
    shape, sels, fmt, dtype = case
    t = (torch.arange(int(torch.tensor(shape).prod())).reshape(shape) % 97).to(dtype)
    if fmt == "channels_last" and len(shape) == 4:
        t = t.to(memory_format=torch.channels_last)
    elif fmt == "permuted" and len(shape) > 1:
        t = t.transpose(0, -1).contiguous().transpose(0, -1)  # dense, reversed layout
    expect = ref_select(t, sels)
    pairs = [(t, d, b) for d, (_, b) in sels.items()]
    keeps = [k for k, _ in sels.values()]
    out = select_channels(pairs, keeps)
    assert torch.equal(out[0], expect)
    ptr = t.data_ptr()
    select_channels_(pairs, keeps)
    assert torch.equal(t, expect) and (t.numel() == 0 or t.data_ptr() == ptr)


@given(selection_cases())
@settings(max_examples=100)
def test_native_fast_path_matches_python_checks(case):
    # A call's batch comes from SelectBatch.from_pairs when that accepts the
    # pairs, else from the Python checks: both must describe the same work.
    shape, sels, fmt, dtype = case
    t = torch.zeros(shape, dtype=dtype)
    if fmt == "channels_last" and len(shape) == 4:
        t = t.to(memory_format=torch.channels_last)
    elif fmt == "permuted" and len(shape) > 1:
        t = t.transpose(0, -1).contiguous().transpose(0, -1)
    other = torch.zeros(3, *shape[1:], dtype=dtype)  # a second tensor, dim 0 selected
    pairs = [(t, d, b) for d, (_, b) in sels.items()] + [(other, 0)]
    keeps = [select_mod._as_index("op", "keep", k) for k in [k for k, _ in sels.values()] + [[2]]]
    for in_place in (True, False):
        fast = _C.SelectBatch.from_pairs(pairs, keeps, False, in_place, in_place,
                                         select_mod._TENSOR_TYPES)
        tensors, _, slow, _ = select_mod._validate_pairs("op", pairs, keeps, True, in_place)
        assert fast is not None
        assert len(fast.tensors()) == len(tensors) and all(a is b for a, b in zip(fast.tensors(), tensors))
        assert fast.layouts() == slow.layouts()
        assert fast.not_dense(False) == slow.not_dense(False)


def test_out_of_place_leaves_inputs_and_accepts_any_strides():
    w = torch.randn(8, 6, 3, 3)
    strided = torch.randn(8, 12)[:, ::2]  # not dense
    snap = snapshot(w, strided)
    out = select_channels([(w, 0), (strided, 0), (w, 1)], [[1, 3], [0, 7], [5]])
    assert_unchanged([w, strided], snap)
    assert out[0] is out[2]
    assert torch.equal(out[0], w[[1, 3]][:, [5]])
    assert torch.equal(out[1], strided[[0, 7]])
    assert out[0].data_ptr() != w.data_ptr()


# --------------------------------------------------------------------------- bad input, nothing modified

def _model_tensors():
    g = torch.Generator().manual_seed(5)
    return torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, generator=g), torch.randn(3, 6, 1, 1, generator=g)


@pytest.mark.parametrize("keep,exc,msg", [
    ([3, 1, 4], ValueError, r"sorted and unique, got unsorted entries 3, 1 at positions 0, 1"),
    ([1, 1, 4], ValueError, r"sorted and unique, got duplicate entries 1, 1"),
    ([0, 6], ValueError, r"index 6 is out of range for 6 channels"),
    ([-1, 2], ValueError, r"index -1 is out of range for 6 channels"),
    ([0.0, 2.0], TypeError, r"keep must hold integers, got float 0.0"),
    (torch.tensor([0.0, 1.0]), TypeError, r"keep must hold integers, got dtype torch.float32"),
    (torch.tensor([[0, 1]]), ValueError, r"keep must be 1-D, got shape \(1, 2\)"),
    ("01", TypeError, r"keep must be a 1-D integer tensor or a sequence of ints, got str"),
])
def test_bad_keep_modifies_nothing(keep, exc, msg):
    w, b, nxt = _model_tensors()
    snap = snapshot(w, b, nxt)
    with pytest.raises(exc, match=msg):
        select_channels_([(w, 0), (b, 0), (nxt, 1)], keep)
    assert_unchanged([w, b, nxt], snap)


def test_bad_pairs_modify_nothing():
    w, b, nxt = _model_tensors()
    snap = snapshot(w, b, nxt)
    cases = [
        ([(w, 0), (nxt, 0)], [0, 1], ValueError, r"pairs\[1\] has 3 channels along dim 0 but pairs\[0\] has 6"),
        ([(w, 0), (b, 3)], [0], ValueError, r"pairs\[1\] dim 3 is out of range for a tensor of shape \(6,\)"),
        ([(w, 0), (b, 0.5)], [0], TypeError, r"pairs\[1\] dim must be an int, got float"),
        ([(w, 0), (w, 0)], [0], ValueError, r"pairs\[1\] selects dim 0 of a tensor that pairs\[0\] already"),
        ([(w, 0), (w.view(-1), 0)], [[0], [0]], ValueError, r"pairs\[0\] and pairs\[1\] overlap in memory"),
        ([(w, 0), ("x", 0)], [0], TypeError, r"pairs\[1\]\[0\] must be a torch.Tensor, got str"),
        ([(w, 0), (b,)], [0], TypeError, r"pairs\[1\] must be \(tensor, dim\) or \(tensor, dim, block\), got a 1-tuple"),
        ([(w, 0), (b, 0, 4)], [0], ValueError, r"pairs\[1\] block 4 must be >= 1 and divide size 6"),
        ([(w, 0), (b, 0)], [[0], [1], [2]], ValueError, r"keep has 3 index lists for 2 pairs"),
        ([(w, 0), (torch.zeros(6, device="meta"), 0)], [0], ValueError,
         r"pairs\[1\] tensor is on meta but pairs\[0\] is on cpu"),
        ([(w, 0), (torch.randn(6, 4)[:, ::2], 0)], [0], ValueError, r"pairs\[1\] tensor .* is not dense"),
        ((w, 0), [0], TypeError, r"pairs must be a list .* got a single \(tensor, dim\) pair"),
        ([(w, 0), (torch.tensor(1.0), 0)], [0], ValueError, r"pairs\[1\] tensor is 0-dim"),
    ]
    for pairs, keep, exc, msg in cases:
        if not isinstance(pairs, list):
            with pytest.raises(exc, match=msg):
                select_channels_(pairs, keep)
            continue
        with pytest.raises(exc, match=msg):
            select_channels_(pairs, keep)
        assert_unchanged([w, b, nxt], snap)
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        select_channels_([(w, 0)], [0], threads=0)
    assert_unchanged([w, b, nxt], snap)


# ---- _InPlace: the undoable in-place call behind surgery's rollback -------------------

def _undo_cases():
    g = torch.Generator().manual_seed(3)
    big = torch.randn(512, 512, 3, 3, generator=g)  # its 2.4 MB snapshot spans two threads
    base = torch.randn(1000, generator=g)
    offset = base[100:100 + 64 * 3].view(64, 3)  # a storage offset
    cl = torch.randn(8, 16, 5, 5, generator=g).to(memory_format=torch.channels_last)
    keep_a = torch.arange(0, 512, 2)
    keep_b = torch.tensor([1, 4, 5, 7, 15])
    pairs = [(big, 0), (big, 1), (offset, 0), (cl, 1), (torch.randn(16, 30, generator=g), 0, 1)]
    keeps = [keep_a, torch.arange(1, 512, 2), torch.arange(0, 64, 5), keep_b, keep_b]
    return pairs, keeps, base


@pytest.mark.parametrize("threads", [1, 2])
def test_in_place_undo_restores_storage_layout_and_data(threads):
    pairs, keeps, base = _undo_cases()
    tensors = list(dict.fromkeys(p[0] for p in pairs))
    before = [(t.clone(), t.shape, t.stride(), t.storage_offset(), t.data_ptr()) for t in tensors]
    base_before = base.clone()
    job = select_mod._InPlace("select_channels_", pairs, keeps, threads)
    job.run(backup=True)
    assert pairs[0][0].shape == (256, 256, 3, 3)  # it did compact
    job.undo()
    for t, (data, shape, stride, offset, ptr) in zip(tensors, before):
        assert t.shape == shape and t.stride() == stride and t.storage_offset() == offset
        assert t.data_ptr() == ptr and torch.equal(t, data)
    assert torch.equal(base, base_before)  # the rest of a shared storage too
    # the same call again gives what a plain select_channels_ gives
    expect = select_channels([(t, d) + tuple(b) for t, d, *b in pairs], keeps)
    select_channels_(pairs, keeps, threads=threads)
    for (t, *_), e in zip(pairs, expect):
        assert torch.equal(t, e)


def test_in_place_undo_without_backup_restores_layouts_only():
    pairs, keeps, _ = _undo_cases()
    tensors = list(dict.fromkeys(p[0] for p in pairs))
    before = [(t.shape, t.stride(), t.data_ptr()) for t in tensors]
    job = select_mod._InPlace("select_channels_", pairs, keeps, None)
    job.run(backup=False)
    job.undo()
    assert [(t.shape, t.stride(), t.data_ptr()) for t in tensors] == before


def test_in_place_undo_before_run_and_on_the_fallback_device():
    t = torch.randn(6, 4)
    job = select_mod._InPlace("select_channels_", [(t, 0)], torch.tensor([1, 3]), None)
    job.undo()  # never ran: nothing to do
    assert t.shape == (6, 4)
    job.run(backup=True, undoable=False)  # the plain op: nothing kept, undo does nothing
    job.undo()
    assert t.shape == (2, 4)
    m = torch.empty(6, 4, device="meta")  # index_select fallback: re-pointed storage
    job = select_mod._InPlace("select_channels_", [(m, 0), (m, 1)], [torch.tensor([1, 3]),
                              torch.tensor([0, 2, 3])], None)
    job.run(backup=True)
    assert m.shape == (2, 3)
    job.undo()
    assert m.shape == (6, 4) and m.stride() == (4, 1)


def test_inference_tensors_are_refused_in_place_outside_inference_mode():
    # torch refuses their new shape only after the data would have moved: check first
    with torch.inference_mode():
        t = torch.arange(24.0).reshape(6, 4)
        u = torch.arange(24.0).reshape(6, 4)
    other = torch.randn(6, 3)
    before, other_before = t.clone(), other.clone()
    keep = torch.tensor([1, 3])
    for pairs in ([(t, 0)], [(other, 0), (t, 0)]):  # alone, and after a normal tensor
        with pytest.raises(ValueError, match=r"pairs\[\d\] tensor is an inference tensor"):
            select_channels_(pairs, keep)
        assert t.shape == (6, 4) and torch.equal(t, before)
        assert other.shape == (6, 3) and torch.equal(other, other_before)
    assert torch.equal(select_channels([(t, 0)], keep)[0], before[keep])  # out of place: fine
    with torch.inference_mode():
        select_channels_([(u, 0)], keep)
    assert torch.equal(u, before[keep])
