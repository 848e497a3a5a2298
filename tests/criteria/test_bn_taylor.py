"""Criteria "bn", "slim" (BatchNorm scale) and "taylor" (first-order Taylor)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyprune
import pyprune.criteria as criteria
import pyprune.criteria.bn  # noqa: F401  (registers bn, slim)
import pyprune.criteria.taylor  # noqa: F401  (registers taylor)
import pyprune.surgery
from pyprune.graph import build_graph
from pyprune.plan import make_plan

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, \
        {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}, \
        {n: p.requires_grad for n, p in model.named_parameters()}, model.training


def same_state(model, before):
    sd, grads, flags, training = before
    now = state(model)
    assert model.training == training
    assert now[2] == flags
    assert sd.keys() == now[0].keys()
    for k in sd:
        assert torch.equal(sd[k], now[0][k]), k
    for k in grads:
        assert (grads[k] is None) == (now[1][k] is None), k
        if grads[k] is not None:
            assert torch.equal(grads[k], now[1][k]), k


class Tiny(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU, a conv without BN, pool, linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 5, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(5)
        self.c3 = nn.Conv2d(5, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.c3(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def tiny(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    m = Tiny().to(dtype)
    with torch.no_grad():
        for bn in (m.b1, m.b2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return m


X = torch.randn(2, 3, 6, 6)


# ---------------------------------------------------------------------------- bn / slim
def test_info():
    assert criteria.info("bn") == criteria.CriterionInfo("none", False, "mean")
    assert criteria.info("slim") == criteria.CriterionInfo("none", True, None, "mean")


def test_slim_prunes_residual_streams():
    # One global threshold with mean-reduced |gamma|: a residual stream (one BatchNorm per
    # block) competes with single-BatchNorm channels on the same scale, so it is pruned too.
    torch.manual_seed(0)
    m = pyprune.models.resnet56()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.data.uniform_(0, 1)
    x = torch.randn(1, 3, 32, 32)
    pyprune.prune(m, x, method="slim", ratio=0.5)
    s = pyprune.last_summary(m)
    assert s.pruned == s.prunable == 30
    assert m.conv1.out_channels < 16 and m.layer3[0].conv2.out_channels < 64
    assert criteria.info("taylor") == criteria.CriterionInfo("required", False, "mean")


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["bn", "slim"])
def test_bn_scores_are_abs_gamma(method, device):
    m = tiny().to(device)
    with torch.no_grad():
        m.b1.weight[2] = -0.7
    before = state(m)
    s = criteria.compute(method, m, X.to(device))
    same_state(m, before)
    assert set(s) == {"c1", "c2"}  # c3 (no BN) and fc (the classifier) are not scored
    assert torch.equal(s["c1"], m.b1.weight.detach().abs().cpu())
    assert torch.equal(s["c2"], m.b2.weight.detach().abs().cpu())
    assert s["c1"].dtype == torch.float32 and s["c1"].device.type == "cpu"


def test_zero_gamma_channels_go_first():
    m = tiny()
    with torch.no_grad():
        m.b1.weight[[1, 4]] = 0.0
        m.b2.weight[3] = 0.0
    g = build_graph(m, X)
    for method, cfg in (("bn", dict(ratio=0.34)), ("slim", dict(global_ratio=0.28))):
        plan = make_plan(g, criteria.compute(method, m, X), **cfg)
        kept = {g.groups[gid].producers[0]: k.tolist() for gid, k in plan.keep.items()}
        # c1: 6 channels, 2 removed: exactly the zero-gamma ones; c2: 5, 1 removed
        assert kept["c1"] == [0, 2, 3, 5], (method, kept)
        assert kept["c2"] == [0, 1, 2, 4], (method, kept)
        assert "c3" not in kept  # no BatchNorm: group left whole, not guessed


def test_slim_one_global_threshold():
    """ratio=0.5 under slim removes the globally lowest |gamma|, whole layers' worth if
    need be (min_channels stays), unlike a uniform per-layer ratio."""
    m = tiny()
    with torch.no_grad():
        m.b1.weight.copy_(torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05, 0.9]))
        m.b2.weight.copy_(torch.tensor([0.5, 0.6, 0.7, 0.8, 0.95]))
    g = build_graph(m, X)
    plan = make_plan(g, criteria.compute("slim", m, X), global_ratio=0.5,
                     normalize=criteria.info("slim").normalize)
    kept = {g.groups[gid].producers[0]: k.tolist() for gid, k in plan.keep.items()}
    # 11 channels, floor(5.5) = 5 removed: the five small gammas of b1
    assert kept == {"c1": [5]}


def test_bn_residual_and_dense_mapping():
    r = pyprune.models.resnet20().eval()
    d = pyprune.models.densenet40().eval()
    torch.manual_seed(1)
    for m in (r, d):
        with torch.no_grad():
            for bn in m.modules():
                if isinstance(bn, nn.BatchNorm2d):
                    bn.weight.uniform_(-1, 1)
    x = torch.randn(1, 3, 32, 32)
    s = criteria.compute("bn", r, x)
    # every conv of the ResNet is followed by its own BN: one to one
    assert torch.equal(s["layer2.0.conv2"], r.layer2[0].bn2.weight.abs())
    assert torch.equal(s["layer2.0.shortcut.0"], r.layer2[0].shortcut[1].weight.abs())
    assert torch.equal(s["conv1"], r.bn1.weight.abs())
    assert "fc" not in s
    # pre-activation DenseNet: a conv's channels are scaled by the BN of every later
    # layer of its block (and the transition); score = the largest |gamma|
    s = criteria.compute("bn", d, x)
    blk = d.dense1
    n0 = d.conv1.out_channels
    g = blk[0].conv.out_channels
    ref = torch.stack([blk[j].bn.weight.abs()[n0:n0 + g] for j in range(1, len(blk))]
                      + [d.trans1.bn.weight.abs()[n0:n0 + g]]).amax(0)
    assert torch.equal(s["dense1.0.conv"], ref)


def test_bn_errors():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(4, 2))
    before = state(m)
    with pytest.raises(ValueError, match="BatchNorm"):
        criteria.compute("bn", m, X)
    with pytest.raises(ValueError, match="example_inputs"):
        criteria.compute("slim", tiny(), None)
    same_state(m, before)


# -------------------------------------------------------------------------------- taylor
def taylor_reference(model, batches, variant):
    """float64 reference: a deep copy in float64, one batch at a time, full backward,
    then sum over each channel's parameters of grad*weight, squared, summed."""
    ref = copy.deepcopy(model).double().eval().requires_grad_(True)
    sets = {"bn": {"c1": [ref.b1.weight, ref.b1.bias], "c2": [ref.b2.weight, ref.b2.bias],
                   "c3": [ref.c3.weight, ref.c3.bias], "fc": [ref.fc.weight, ref.fc.bias]},
            "weight": {"c1": [ref.c1.weight], "c2": [ref.c2.weight],
                       "c3": [ref.c3.weight, ref.c3.bias], "fc": [ref.fc.weight, ref.fc.bias]}}
    out = {k: 0.0 for k in sets[variant]}
    for x, y in batches:
        ref.zero_grad(set_to_none=True)
        F.cross_entropy(ref(x.double()), y).backward()
        for k, ps in sets[variant].items():
            t = sum((p.grad * p.detach()).reshape(p.shape[0], -1).sum(1) for p in ps)
            out[k] = out[k] + t * t
    return out


def batches(n=3, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 3, 6, 6, generator=g), torch.randint(0, 3, (b,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", ["bn", "weight"])
def test_taylor_matches_float64_reference(dtype, variant, device):
    m = tiny(dtype).to(device)
    data = [(x.to(dtype), y) for x, y in batches()]  # CPU batches: moved to the model
    m.train()
    # grads present before the call must come back untouched
    F.cross_entropy(m(data[0][0].to(device)), data[0][1].to(device)).backward()
    m.c1.weight.requires_grad_(False)
    before = state(m)
    s = criteria.compute("taylor", m, X.to(dtype).to(device), data=data, variant=variant,
                         progress=False)
    same_state(m, before)
    ref = taylor_reference(m.cpu(), data, variant)
    assert set(s) == set(ref)
    tol = dict(rtol=1e-4, atol=1e-9) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-16)
    for k in ref:
        assert s[k].dtype == torch.float64
        torch.testing.assert_close(s[k], ref[k], **tol)


def test_taylor_num_batches_and_loss_fn():
    m = tiny()
    data = batches(4)
    one = criteria.compute("taylor", m, X, data=data, num_batches=1, progress=False)
    ref = taylor_reference(m, data[:1], "bn")
    torch.testing.assert_close(one["c2"], ref["c2"], rtol=1e-4, atol=1e-9)
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        return F.cross_entropy(out, y) * 2.0

    two = criteria.compute("taylor", m, X, data=data, num_batches=1, loss_fn=loss_fn,
                           progress=False)
    assert calls == [1]
    torch.testing.assert_close(two["c2"], 4.0 * one["c2"], rtol=1e-5, atol=0)
    allb = criteria.compute("taylor", m, X, data=iter(data), num_batches=None)  # default bar
    torch.testing.assert_close(allb["c2"], taylor_reference(m, data, "bn")["c2"],
                               rtol=1e-4, atol=1e-9)


def test_taylor_channel_that_does_not_change_the_loss_scores_zero():
    m = tiny()
    with torch.no_grad():
        m.c3.weight[:, 2] = 0.0  # channel 2 of c2 feeds nothing
    data = batches(2)
    x, y = data[0]
    loss = F.cross_entropy(m.eval()(x), y)
    pruned = copy.deepcopy(m)
    g = build_graph(pruned, X)
    pyprune.surgery.apply_plan(pruned, make_plan(g, {"c2": torch.tensor([1., 1., 0., 1., 1.])},
                                                 ratio=0.2))
    assert pruned.c2.out_channels == 4
    torch.testing.assert_close(F.cross_entropy(pruned.eval()(x), y), loss)  # removal: no change
    for variant in ("bn", "weight"):
        s = criteria.compute("taylor", m, X, data=data, variant=variant, progress=False)
        assert s["c2"][2] == 0.0, variant
        assert (s["c2"][[0, 1, 3, 4]] > 0).all(), variant
    # zero BN scale and shift: the channel is constant zero after BN
    m2 = tiny()
    with torch.no_grad():
        m2.b1.weight[4] = 0.0
        m2.b1.bias[4] = 0.0
    s = criteria.compute("taylor", m2, X, data=data, progress=False)
    assert s["c1"][4] == 0.0 and (s["c1"][:4] > 0).all()


def test_taylor_bad_inputs_name_the_argument():
    m = tiny()
    before = state(m)
    x, y = batches(1)[0]
    cases = [
        (dict(data=None), ValueError, "data is required"),
        (dict(data=[]), ValueError, "data is empty"),
        (dict(data=iter([])), ValueError, "data is empty"),
        (dict(data=[x]), ValueError, r"data: .*batch 0 is a Tensor"),
        (dict(data=[(x, y, y)]), ValueError, r"data: .*batch 0 is a tuple of length 3"),
        (dict(data=x), TypeError, "data must be an iterable"),
        (dict(data=[(x[:, :2], y)]), ValueError, r"data: batch 0 \(inputs \[\(4, 2, 6, 6\)\]"),
        (dict(data=[(x, y[:2])]), ValueError, "data: batch 0"),
        (dict(data=[(x, y)], num_batches=0), ValueError, "num_batches must be"),
        (dict(data=[(x, y)], loss_fn=3), TypeError, "loss_fn must be callable"),
        (dict(data=[(x, y)], loss_fn=lambda o, t: o), ValueError, "loss_fn must return a scalar"),
        (dict(data=[(x, y)], variant="gate"), ValueError, "variant must be"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            criteria.compute("taylor", m, X, progress=False, **kw)
        same_state(m, before)


def test_taylor_through_scores_and_prune():
    m = tiny()
    data = batches(2)
    before = state(m)
    for kw in (dict(), dict(data=[]), dict(data=[data[0][0]])):
        with pytest.raises(ValueError, match="data"):
            pyprune.prune(m, X, method="taylor", ratio=0.5, progress=False, **kw)
        same_state(m, before)
    s = pyprune.scores(m, X, method="taylor", data=data, progress=False)
    assert set(s) == {"c1", "c2", "c3", "fc"}
    pyprune.prune(m, X, method="taylor", ratio=0.5, data=data, progress=False)
    assert (m.c1.out_channels, m.c2.out_channels, m.c3.out_channels) == (3, 3, 2)
    assert m.fc.out_features == 3
    m(X)


def test_taylor_through_a_data_parallel_wrapper():
    """A wrapper's names carry its ``module.`` prefix; the BatchNorms are still found."""
    m = tiny()
    data = batches(2)
    plain = criteria.compute("taylor", m, X, data=data, progress=False)
    wrapped = criteria.compute("taylor", nn.DataParallel(m), X, data=data, progress=False)
    assert set(wrapped) == {"module." + k for k in plain}
    for k in plain:
        assert torch.equal(wrapped["module." + k], plain[k]), k
    weight = criteria.compute("taylor", m, X, data=data, variant="weight", progress=False)
    assert not torch.equal(plain["c1"], weight["c1"])  # the bn variant really was used
