"""Surgery: attributes, gradients, optimizer state, history, atomicity."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from pyprune.criteria.random import random_scores
from pyprune.graph import build_graph
from pyprune.plan import Plan, make_plan
from pyprune.surgery import HISTORY_ATTR, apply_plan, history, replay


pytestmark = pytest.mark.usefixtures("torch_single_thread")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c3 = nn.Conv2d(8, 6, 1)
        self.fc1 = nn.Linear(6 * 2 * 2, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.c1(x)))
        x = x + self.bn2(self.c2(x))
        x = torch.relu(self.dw(x))
        x = nn.functional.max_pool2d(torch.relu(self.c3(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


X = torch.randn(4, 3, 4, 4)


def setup(seed=0, ratio=0.5):
    torch.manual_seed(seed)
    model = Net()
    g = build_graph(model, X)
    plan = make_plan(g, random_scores(model, seed=seed), ratio=ratio)
    return model, g, plan


def snapshot(model, opt=None):
    snap = {}
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        snap[n] = (t.clone(), t.shape, t.stride(), t.untyped_storage().data_ptr(),
                   None if getattr(t, "grad", None) is None else t.grad.clone())
    attrs = {n: {k: v for k, v in vars(m).items() if isinstance(v, (int, tuple, bool, float))}
             for n, m in model.named_modules()}
    state = None
    if opt is not None:
        state = [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
                 for p in model.parameters()]
    return snap, attrs, state, copy.deepcopy(getattr(model, HISTORY_ATTR, None))


def assert_same(a, b):
    (sa, aa, oa, ha), (sb, ab, ob, hb) = a, b
    assert sa.keys() == sb.keys()
    for k in sa:
        ta, tb = sa[k], sb[k]
        assert torch.equal(ta[0], tb[0]) and ta[1:4] == tb[1:4], k
        assert (ta[4] is None) == (tb[4] is None) and (ta[4] is None or torch.equal(ta[4], tb[4]))
    assert aa == ab
    if oa is not None:
        for x, y in zip(oa, ob):
            assert x.keys() == y.keys()
            for k in x:
                assert torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k]
    assert ha == hb


def test_attributes_and_shapes_follow_the_plan():
    model, g, plan = setup()
    apply_plan(model, plan)
    assert model.c1.out_channels == model.bn1.num_features == model.c2.in_channels == 4
    assert model.dw.groups == model.dw.in_channels == model.dw.out_channels == 4
    assert model.dw.weight.shape == (4, 1, 3, 3)
    assert model.c3.out_channels == 3 and model.fc1.in_features == 12
    assert model.fc1.out_features == 5 and model.fc2.out_features == 3
    assert model(X).shape == (4, 3)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    lambda p: torch.optim.Adam(p, lr=1e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-3, amsgrad=True),
])
def test_optimizer_state_and_grads_are_pruned(make_opt):
    model, g, plan = setup()
    opt = make_opt(model.parameters())
    for _ in range(2):
        opt.zero_grad()
        model(X).square().mean().backward()
        opt.step()
    model(X).square().mean().backward()  # leave fresh grads in place
    old = {n: (p.detach().clone(), p.grad.clone(),
               {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v) and v.dim()})
           for n, p in model.named_parameters()}
    apply_plan(model, plan, optimizer=opt)
    rec = history(model)[-1]
    for t in rec["tensors"]:
        if t["name"] not in old:
            continue
        p = model.get_parameter(t["name"])
        assert p.grad.shape == p.shape
        for v in opt.state[p].values():
            if torch.is_tensor(v) and v.dim():
                assert v.shape == p.shape
    # c1's filters: value, grad and state rows are the kept rows of the old ones
    keep = next(t["keep"] for t in rec["tensors"] if t["name"] == "c1.weight" and t["dim"] == 0)
    p = model.c1.weight
    assert torch.equal(p.detach(), old["c1.weight"][0][keep])
    assert torch.equal(p.grad, old["c1.weight"][1][keep])
    for k, v in old["c1.weight"][2].items():
        assert torch.equal(opt.state[p][k], v[keep])
    opt.zero_grad()
    model(X).square().mean().backward()
    opt.step()  # training continues


def test_history_records_plain_data():
    model, g, plan = setup()
    rec = apply_plan(model, plan)
    assert history(model) == [rec]
    t = rec["tensors"][0]
    assert set(t) == {"name", "dim", "block", "keep"} and isinstance(t["keep"], list)
    assert any(a == {"module": "dw", "attr": "groups", "value": 4} for a in rec["attrs"])
    fc1 = [t for t in rec["tensors"] if t["name"] == "fc1.weight" and t["dim"] == 1]
    assert fc1[0]["block"] == 4


def test_replay_rebuilds_the_same_structure():
    model, g, plan = setup()
    apply_plan(model, plan)
    torch.manual_seed(0)
    fresh = Net()
    replay(fresh, history(model))
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.eval()(X), model.eval()(X))
    assert history(fresh) == history(model)


class _FailAfterRun:
    """A SelectBatch stand-in whose run_cpu does its work, then raises: the native op has
    written every compacted value (in place, or into the new storages)."""

    def __init__(self, batch):
        self._batch = batch

    def __getattr__(self, name):
        return getattr(self._batch, name)

    def run_cpu(self, dsts, threads):
        self._batch.run_cpu(dsts, threads)
        raise RuntimeError("injected failure")


def _trained_setup():
    model, g, plan = setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(X).sum().backward()
    opt.step()
    model(X).sum().backward()
    return model, g, plan, opt


def _check_rolled_back(model, opt, before, data_kept):
    after = snapshot(model, opt)
    if data_kept:
        assert_same(after, before)
    else:  # storages, shapes, strides and attributes, not the data
        (sa, aa, _, ha), (sb, ab, _, hb) = after, before
        assert {k: v[1:4] for k, v in sa.items()} == {k: v[1:4] for k, v in sb.items()}
        assert aa == ab and ha == hb


@pytest.mark.parametrize("zero_copy", [False, True])
@pytest.mark.parametrize("backup", [True, False])
def test_failure_inside_the_op_rolls_everything_back(monkeypatch, backup, zero_copy):
    from pyprune.ops.select import Compaction

    model, g, plan, opt = _trained_setup()
    before = snapshot(model, opt)
    real_init = Compaction.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.batch = _FailAfterRun(self.batch)

    monkeypatch.setattr(Compaction, "__init__", init)
    with pytest.raises(RuntimeError, match="injected"):
        apply_plan(model, plan, optimizer=opt, backup=backup, zero_copy=zero_copy)
    # out of place nothing was overwritten; in place the backup puts the data back
    _check_rolled_back(model, opt, before, data_kept=backup or not zero_copy)
    monkeypatch.undo()
    apply_plan(model, plan, optimizer=opt)  # and the model is still prunable
    assert model(X).shape == (4, 3)


@pytest.mark.parametrize("zero_copy", [False, True])
def test_failure_while_tensors_are_repointed_rolls_everything_back(monkeypatch, zero_copy):
    # half of the tensors have their new storage / layout when Tensor.set_ fails
    model, g, plan, opt = _trained_setup()
    before = snapshot(model, opt)
    real_set = torch.Tensor.set_
    calls = {"n": 0, "fail_at": None}

    def failing_set(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise RuntimeError("injected set_ failure")
        return real_set(self, *args, **kwargs)

    n_tensors = len({id(t) for t in list(model.parameters()) + list(model.buffers())})
    calls["fail_at"] = n_tensors // 2
    monkeypatch.setattr(torch.Tensor, "set_", failing_set)
    with pytest.raises(RuntimeError, match="injected set_"):
        apply_plan(model, plan, optimizer=opt, zero_copy=zero_copy)
    monkeypatch.undo()
    assert calls["n"] > calls["fail_at"]  # the undo re-pointed tensors too
    _check_rolled_back(model, opt, before, data_kept=True)
    apply_plan(model, plan, optimizer=opt)
    assert model(X).shape == (4, 3)


def test_failure_in_an_attribute_update_rolls_everything_back(monkeypatch):
    model, g, plan = setup()
    before = snapshot(model)
    orig = nn.Module.__setattr__

    def failing(self, name, value):
        if name == "num_features":
            raise RuntimeError("injected attribute failure")
        orig(self, name, value)

    monkeypatch.setattr(nn.BatchNorm2d, "__setattr__", failing)
    with pytest.raises(RuntimeError, match="injected attribute"):
        apply_plan(model, plan)
    monkeypatch.undo()
    assert_same(snapshot(model), before)


def test_invalid_plans_change_nothing():
    model, g, plan = setup()
    before = snapshot(model)
    first = next(iter(plan.keep))
    bad = [
        ({first: torch.tensor([1, 0])}, "sorted and unique"),
        ({first: torch.tensor([], dtype=torch.int64)}, "empty"),
        ({first: torch.tensor([0, 99])}, "out of range"),
        ({first: torch.tensor([0.0, 1.0])}, "integer"),
        ({12345: torch.tensor([0])}, "unknown group"),
        ({g.groups_of("fc2")[0].id: torch.tensor([0])}, "not prunable"),
    ]
    for keep, msg in bad:
        with pytest.raises(ValueError, match=msg):
            apply_plan(model, Plan(keep, g))
        assert_same(snapshot(model), before)
    other, _, other_plan = setup()
    with pytest.raises(ValueError, match="another model"):
        apply_plan(model, other_plan)
    with pytest.raises(TypeError, match="Optimizer"):
        apply_plan(model, plan, optimizer=object())
    assert_same(snapshot(model), before)


def test_stale_graph_is_refused():
    model, g, plan = setup()
    apply_plan(model, plan)
    before = snapshot(model)
    with pytest.raises(ValueError, match="stale"):
        apply_plan(model, plan)
    assert_same(snapshot(model), before)


def test_optimizer_state_of_unexpected_shape_is_refused():
    model, g, plan = setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.state[model.c1.weight]["weird"] = torch.zeros(3)
    before = snapshot(model)
    with pytest.raises(ValueError, match="weird"):
        apply_plan(model, plan, optimizer=opt)
    assert_same(snapshot(model), before)


def test_prune_twice_and_without_backup():
    model, g, plan = setup()
    apply_plan(model, plan, backup=False)
    g2 = build_graph(model, X)
    apply_plan(model, make_plan(g2, random_scores(model, seed=1), ratio=0.5))
    assert len(history(model)) == 2
    assert model.c1.out_channels == 2
    assert model(X).shape == (4, 3)


def test_keep_as_lists_or_int32_gives_the_same_model():
    # keep entries that are not int64 CPU tensors take the per-group checks
    base, g, plan = setup()
    apply_plan(base, plan)
    base_snap = snapshot(base)
    for convert in (lambda k: k.tolist(), lambda k: k.to(torch.int32)):
        model, g2, plan2 = setup()
        plan2.keep = {gid: convert(k) for gid, k in plan2.keep.items()}
        apply_plan(model, plan2)
        got = snapshot(model)
        assert got[0].keys() == base_snap[0].keys()
        for name in got[0]:
            assert torch.equal(got[0][name][0], base_snap[0][name][0]), name
        assert got[1] == base_snap[1]


def test_inference_tensor_weights_are_refused_before_anything_changes():
    model, g, plan = setup()
    with torch.no_grad(), torch.inference_mode():  # e.g. weights loaded under inference mode
        model.c2.weight = nn.Parameter(model.c2.weight.clone(), requires_grad=False)
    g = build_graph(model, X)
    plan = make_plan(g, random_scores(model, seed=0), ratio=0.5)
    before = snapshot(model)
    with pytest.raises(ValueError, match="inference tensor"):
        apply_plan(model, plan)
    assert_same(snapshot(model), before)


# ---- memory: pruned tensors hold exactly their values (unless zero_copy) ----------------

def _touched(model, opt=None):
    """Every tensor surgery may touch: parameters, buffers, grads, optimizer state."""
    out = {}
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        out[n] = t
        if getattr(t, "grad", None) is not None:
            out[n + ".grad"] = t.grad
        if opt is not None and t in opt.state:
            for k, v in opt.state[t].items():
                if torch.is_tensor(v):
                    out[f"{n}.state.{k}"] = v
    return out


def _assert_compact(tensors):
    for n, t in tensors.items():
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), n
        assert t.storage_offset() == 0, n
    assert sum(t.untyped_storage().nbytes() for t in tensors.values()) == \
        sum(t.numel() * t.element_size() for t in tensors.values())


def _trained(device):
    model, _, _ = setup()
    model.to(device)
    x = X.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, amsgrad=True)
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    model(x).square().mean().backward()
    g = build_graph(model, x)
    return model, make_plan(g, random_scores(model, seed=0), ratio=0.5), opt, x


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_pruned_tensors_hold_exactly_their_values(device):
    model, plan, opt, x = _trained(device)
    dense = _touched(model, opt)
    old_ptrs = {n: t.untyped_storage().data_ptr() for n, t in dense.items()}
    expect = {n: t.clone() for n, t in dense.items()}
    rec = apply_plan(model, plan, optimizer=opt)
    after = _touched(model, opt)
    assert after.keys() == dense.keys()
    assert all(after[n] is dense[n] for n in dense)  # same objects
    _assert_compact(after)
    pruned = {t["name"] for t in rec["tensors"]}
    for n, t in after.items():
        base = n.split(".grad")[0].split(".state.")[0]
        moved = t.untyped_storage().data_ptr() != old_ptrs[n]
        assert moved == (base in pruned and t.dim() > 0), n  # only pruned tensors move
    # the values are those of the slow reference (index_select of the kept channels)
    for t in rec["tensors"]:
        for suffix in ("", ".grad", ".state.exp_avg", ".state.exp_avg_sq", ".state.max_exp_avg_sq"):
            n = t["name"] + suffix
            if n not in expect:
                continue
            idx = torch.tensor(t["keep"], device=device)
            if t["block"] > 1:
                idx = (idx[:, None] * t["block"] + torch.arange(t["block"], device=device)).reshape(-1)
            expect[n] = expect[n].index_select(t["dim"], idx)
    for n, t in after.items():
        assert torch.equal(t, expect[n]), n
    assert model(x).shape == (4, 3)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_zero_copy_keeps_the_dense_storages_and_gives_the_same_values(device):
    model, plan, opt, x = _trained(device)
    ref_model, ref_plan, ref_opt, _ = _trained(device)
    dense = _touched(model, opt)
    old = {n: (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for n, t in dense.items()}
    apply_plan(model, plan, optimizer=opt, zero_copy=True)
    apply_plan(ref_model, ref_plan, optimizer=ref_opt)
    after, ref = _touched(model, opt), _touched(ref_model, ref_opt)
    for n, t in after.items():
        assert t is dense[n]
        assert (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) == old[n], n
        assert torch.equal(t, ref[n]), n
    assert sum(t.untyped_storage().nbytes() for t in after.values()) > \
        sum(t.numel() * t.element_size() for t in after.values())
    torch.testing.assert_close(model(x), ref_model(x), rtol=0, atol=0)


def test_replay_and_load_give_compact_models(tmp_path):
    import pyprune

    model, g, plan = setup()
    apply_plan(model, plan)
    _assert_compact(_touched(model))
    torch.manual_seed(0)
    fresh = Net()
    replay(fresh, history(model))
    _assert_compact(_touched(fresh))
    path = tmp_path / "m.pt"
    pyprune.save(model, path)
    loaded = pyprune.load(path, Net)
    _assert_compact(_touched(loaded))
    torch.testing.assert_close(loaded.eval()(X), model.eval()(X))
    # the state dict torch.save writes is the pruned size
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    dense_path = tmp_path / "dense.pt"
    torch.save(Net().state_dict(), dense_path)
    values = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert (tmp_path / "sd.pt").stat().st_size < values + 16384
    assert (tmp_path / "sd.pt").stat().st_size < dense_path.stat().st_size


def test_a_view_of_a_pruned_tensor_keeps_the_old_storage_alive_not_the_model():
    model, g, plan = setup()
    view = model.c1.weight.detach()[:1]  # something outside the model holding the storage
    dense_bytes = view.untyped_storage().nbytes()
    before = view.clone()
    apply_plan(model, plan)
    assert view.untyped_storage().nbytes() == dense_bytes and torch.equal(view, before)
    _assert_compact(_touched(model))


def test_bad_surgery_flags_are_refused():
    model, g, plan = setup()
    before = snapshot(model)
    for kw in ({"backup": "yes"}, {"zero_copy": 1}):
        with pytest.raises(TypeError, match=list(kw)[0]):
            apply_plan(model, plan, **kw)
        with pytest.raises(TypeError, match=list(kw)[0]):
            replay(model, [], **kw)
    assert_same(snapshot(model), before)


# ---- Compaction: the undoable batch behind surgery --------------------------------------

@pytest.mark.parametrize("compact_storage", [False, True])
def test_compaction_runs_and_undoes(compact_storage):
    from pyprune.ops.select import Compaction, _InPlace, select_channels

    g = torch.Generator().manual_seed(1)
    base = torch.randn(400, generator=g)
    off = base[10:10 + 64 * 3].view(64, 3)
    cl = torch.randn(8, 16, 5, 5, generator=g).to(memory_format=torch.channels_last)
    w = torch.randn(32, 16, 3, 3, generator=g)
    pairs = [(w, 0), (w, 1), (off, 0), (cl, 1)]
    keeps = [torch.arange(0, 32, 3), torch.tensor([1, 4, 5, 7, 15]), torch.arange(0, 64, 5),
             torch.tensor([0, 2, 3])]
    tensors = [w, off, cl]
    before = [(t.clone(), t.shape, t.stride(), t.storage_offset(), t.data_ptr()) for t in tensors]
    expect = select_channels(pairs, keeps)
    job = Compaction(pairs, keeps)
    job.run(backup=True, compact_storage=compact_storage)
    for (t, *_), e in zip(pairs, expect):
        assert torch.equal(t, e) and t.stride() == e.stride()
        if compact_storage:
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    assert cl.is_contiguous(memory_format=torch.channels_last)
    job.undo()
    for t, (data, shape, stride, offset, ptr) in zip(tensors, before):
        assert (t.shape, t.stride(), t.storage_offset(), t.data_ptr()) == (shape, stride, offset, ptr)
        assert torch.equal(t, data)
    # the former name still works, positionally
    job = _InPlace("select_channels_", [(w, 0)], torch.tensor([0, 5]), None)
    job.run()
    assert w.shape == (2, 16, 3, 3)


def _heap_reader():
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = MallInfo2

    def heap():
        m = fn()
        return m.uordblks + m.hblkhd
    return heap


def _vgg_plan(**kw):
    from pyprune.models import vgg16_bn

    torch.manual_seed(0)
    model = vgg16_bn(**kw).eval()
    x = torch.randn(1, 3, 32, 32)
    return model, make_plan(build_graph(model, x), random_scores(model, seed=0), ratio=0.5)


def test_peak_extra_memory_of_the_surgery_is_at_most_the_pruned_size():
    # glibc's count of the bytes malloc has handed out (torch's CPU allocator and the
    # native code both allocate there), read by a thread while apply_plan runs
    import threading

    heap = _heap_reader()
    if heap is None:
        pytest.skip("needs glibc's mallinfo2")
    model, plan = _vgg_plan()
    dense = sum(t.numel() * t.element_size() for t in _touched(model).values())
    gc_peak = {"v": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            gc_peak["v"] = max(gc_peak["v"], heap())
            stop.wait(1e-4)

    base = heap()
    gc_peak["v"] = base
    th = threading.Thread(target=sample)
    th.start()
    try:
        apply_plan(model, plan)
    finally:
        stop.set()
        th.join()
    pruned = sum(t.numel() * t.element_size() for t in _touched(model).values())
    extra = gc_peak["v"] - base
    assert pruned < dense / 3
    assert extra <= pruned * 1.05 + (1 << 20), (extra, pruned)
    assert heap() - base < -(dense - pruned) * 0.9  # and the dense storages are gone


@pytest.mark.cuda
def test_peak_extra_cuda_memory_of_the_surgery_is_at_most_the_pruned_size():
    model, _ = _vgg_plan()
    model.cuda()
    x = torch.randn(1, 3, 32, 32, device="cuda")
    plan = make_plan(build_graph(model, x), random_scores(model, seed=0), ratio=0.5)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    apply_plan(model, plan)
    torch.cuda.synchronize()
    pruned = sum(t.numel() * t.element_size() for t in _touched(model).values())
    assert torch.cuda.max_memory_allocated() - before <= pruned * 1.05 + (1 << 20)
    assert torch.cuda.memory_allocated() - before < 0
    _assert_compact(_touched(model))


def test_prune_passes_zero_copy_through():
    import pyprune

    model, g, plan = setup()
    ptr = model.c1.weight.untyped_storage().data_ptr()
    pyprune.prune(model, X, method="l1", ratio=0.5, zero_copy=True)
    w = model.c1.weight
    assert w.shape[0] == 4 and w.untyped_storage().data_ptr() == ptr
    assert w.untyped_storage().nbytes() > w.numel() * w.element_size()
    other, _, _ = setup()
    pyprune.prune(other, X, method="l1", ratio=0.5)
    _assert_compact(_touched(other))
    for (n, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), n


class _ChannelsLastNorm(nn.Module):
    """ConvNeXt-style block: conv, permute to channels-last, LayerNorm(C), Linear, back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.pw = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 3, 1)
        y = self.pw(self.norm(y))
        return self.head(y.mean((1, 2)))


def test_layer_norm_tuple_attribute_is_pruned_and_replayed(tmp_path):
    import pyprune
    torch.manual_seed(0)
    model = _ChannelsLastNorm().eval()
    x = torch.randn(2, 3, 8, 8)
    pyprune.prune(model, x[:1], method="l1", ratio=0.5)
    assert model.norm.normalized_shape == (4,)
    assert model.norm.weight.shape == (4,) and model.conv.out_channels == 4
    assert model.pw.in_features == 4
    y = model(x)
    y.sum().backward()
    path = tmp_path / "m.pt"
    pyprune.save(model, path)
    again = pyprune.load(path, _ChannelsLastNorm).eval()
    assert again.norm.normalized_shape == (4,)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
