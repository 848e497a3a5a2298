"""pyprune.prune / pyprune.scores on the reference models, end to end."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

import pyprune.api as api
import pyprune.criteria as criteria
from pyprune.graph import build_graph
from pyprune.plan import make_plan
from pyprune.surgery import apply_plan


pytestmark = pytest.mark.usefixtures("torch_single_thread")


models = pytest.importorskip("pyprune.models")

REFERENCE = sorted(models.list_models())
JIT_DEPRECATED = "ignore:`torch.jit.trace.*` is deprecated:DeprecationWarning"


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 4)).eval()


X = torch.randn(2, 3, 8, 8)


def ref_model(name, dtype=torch.float32, batch=2):
    """A reference model with non-zero BN shifts and outputs of order 1 (deep residual
    streams otherwise reach 1e8, where float64 rounding alone exceeds atol=1e-10)."""
    torch.manual_seed(0)
    model = models.get_model(name)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 0.6)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
    model = model.to(dtype).eval()
    x = torch.randn(batch, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        scale = float(model(x).abs().max())
        last.weight /= scale
        last.bias /= scale
    return model, x


def zero_removed(model, graph, plan):
    mask = plan.kept_mask()
    named = dict(model.named_parameters())
    with torch.no_grad():
        for m in graph.tensor_members:
            if m.role == "out" and m.name in named:
                idx = (~mask[graph.member_index(m)]).nonzero().flatten()
                if m.block > 1:
                    idx = (idx[:, None] * m.block + torch.arange(m.block)).reshape(-1)
                named[m.name].index_fill_(m.dim, idx, 0.0)


HEAVY = {"densenet40", "mobilenetv2", "resnet110"}  # slow in float64 on CPU: one example
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate]  # shrinking would take minutes


def _check_random_plan(name, seed, ratio):
    """Random plan: zeroed channels removed exactly (float64), forward and backward run."""
    model, x = ref_model(name, torch.float64, batch=1)
    g = build_graph(model, x)
    plan = make_plan(g, criteria.compute("random", model, x, seed=seed), ratio=ratio)
    assert plan.num_removed > 0
    zero_removed(model, g, plan)
    with torch.no_grad():
        ref = model(x)
    dense = sum(p.numel() for p in model.parameters())
    apply_plan(model, plan)
    assert sum(p.numel() for p in model.parameters()) < dense
    out = model(x)
    assert out.shape == (1, 10)
    torch.testing.assert_close(out.detach(), ref, atol=1e-10, rtol=0)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


@pytest.mark.parametrize("name", [n for n in REFERENCE if n not in HEAVY])
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=_PHASES)
@given(seed=st.integers(0, 2**31 - 1), ratio=st.floats(0.1, 0.9))
def test_reference_random_plan(name, seed, ratio):
    _check_random_plan(name, seed, ratio)


@pytest.mark.parametrize("name", sorted(HEAVY & set(REFERENCE)))
@settings(max_examples=1, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=_PHASES)
@given(seed=st.integers(0, 2**31 - 1), ratio=st.floats(0.1, 0.9))
def test_reference_random_plan_heavy(name, seed, ratio):
    _check_random_plan(name, seed, ratio)


@pytest.mark.filterwarnings(JIT_DEPRECATED)
@pytest.mark.parametrize("name", REFERENCE)
def test_reference_pruned_model_traces_and_exports(name):
    model, x = ref_model(name)
    api.prune(model, x, "l1", 0.5)
    with torch.no_grad():
        ref = model(x)
        traced = torch.jit.trace(model, (x,), check_trace=False)
        torch.testing.assert_close(traced(x), ref)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), ref)


def test_prune_halves_every_prunable_group():
    model, x = ref_model("resnet20")
    g = build_graph(model, x)
    sizes = {grp.id: grp.size for grp in g.prunable_groups}
    api.prune(model, x, "l1", 0.5)
    g2 = build_graph(model, x)
    assert {grp.id: grp.size for grp in g2.prunable_groups} == {
        i: s - s // 2 for i, s in sizes.items()}
    assert model.fc.out_features == 10  # the model output is never pruned


def test_vgg_width_option():
    model = models.vgg16_bn(width=0.25) if "width" in models.vgg16_bn.__code__.co_varnames \
        else pytest.skip("vgg16_bn has no width option")
    x = torch.randn(1, 3, 32, 32)
    api.prune(model.eval(), x, "l2", 0.25)
    assert model(x).shape == (1, 10)


def test_scores_returns_per_output_channel_scores():
    model = small_net()
    s = api.scores(model, X, "l1")
    assert set(s) == {"0", "3", "7"}
    torch.testing.assert_close(s["0"], model[0].weight.abs().sum((1, 2, 3)))
    torch.testing.assert_close(api.scores(model, X, "l2")["7"], model[7].weight.norm(dim=1))
    r1, r2 = api.scores(model, X, "random", seed=5), api.scores(model, X, "random", seed=5)
    assert all(torch.equal(r1[k], r2[k]) and r1[k].shape == s[k].shape for k in s)


def test_scores_of_conv_transpose_follow_output_channels():
    m = nn.ConvTranspose2d(4, 6, 3, groups=2)
    s = criteria.compute("l1", nn.Sequential(m), None)["0"]
    w = m.weight.detach()  # [in, out/groups, k, k]
    expect = torch.cat([w[:2].abs().sum((0, 2, 3)), w[2:].abs().sum((0, 2, 3))])
    torch.testing.assert_close(s, expect)


@pytest.mark.parametrize("method", ["hrank_v2", "Slim", "nope", ""])
def test_unknown_methods_list_the_supported_ones(method):
    for fn in (lambda: api.prune(small_net(), X, method),
               lambda: api.scores(small_net(), X, method)):
        with pytest.raises(ValueError, match=r"supported methods: .*l1.*random"):
            fn()


def test_criteria_registry_plugs_in_new_methods():
    calls = []

    @criteria.register("first_channels", data="optional")
    def first(model, example_inputs, data=None, bias=1.0):
        calls.append(data)
        return {n: -torch.arange(m.out_channels, dtype=torch.float32) * bias
                for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    try:
        model = small_net()
        api.prune(model, X, "first_channels", 0.5, data=["batches"], bias=2.0)
        assert calls == [["batches"]]
        assert model[0].out_channels == 4
        assert torch.equal(model[0].weight, small_net()[0].weight[:4])
    finally:
        del criteria.CRITERIA["first_channels"]


def test_options_are_routed_and_unknown_ones_rejected():
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(X).sum().backward()
    opt.step()
    api.prune(model, X, "random", 0.5, seed=3, min_channels=5, round_to=1, optimizer=opt)
    assert model[0].out_channels == 5
    assert opt.state[model[0].weight]["momentum_buffer"].shape == model[0].weight.shape
    with pytest.raises(TypeError, match="does not take option"):
        api.prune(small_net(), X, "l1", 0.5, seed=3)
    with pytest.raises(ValueError, match="ratio"):
        api.prune(small_net(), X, "l1", 1.5)


def test_ignore_by_module_and_name():
    model = small_net()
    api.prune(model, X, "l1", 0.5, ignore=[model[0]])
    assert model[0].out_channels == 8 and model[3].out_channels == 3
    model = small_net()
    api.prune(model, X, "l1", 0.5, ignore="3")
    assert model[0].out_channels == 4 and model[3].out_channels == 6


def test_global_ratio_through_prune():
    model, x = ref_model("vgg11_bn")
    dense = sum(p.numel() for p in model.parameters())
    api.prune(model, x, "l1", global_ratio=0.3, normalize="mean")
    assert sum(p.numel() for p in model.parameters()) < dense
    assert model(x).shape == (2, 10)


def test_prune_returns_the_same_model_and_profile_is_exported():
    model = small_net()
    assert api.prune(model, X, "l1", 0.5) is model
    assert callable(api.profile)


def test_l1_scores_match_a_float64_sum():
    torch.manual_seed(0)
    conv = nn.Conv2d(256, 64, 3)
    with torch.no_grad():
        conv.weight.mul_(torch.logspace(-3, 3, 256)[None, :, None, None])  # mixed scales
    s = criteria.compute("l1", nn.Sequential(conv), None)["0"]
    ref = conv.weight.detach().double().abs().sum((1, 2, 3))
    assert s.dtype == torch.float32
    assert float(((s.double() - ref).abs() / ref).max()) < 1e-6


def test_prune_with_either_tracer_gives_the_same_model():
    a, b = small_net(), small_net()
    api.prune(a, X, "l1", 0.5)  # eager trace (the default)
    api.prune(b, X, "l1", 0.5, tracer="fx")
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="tracer"):
        api.prune(small_net(), X, "l1", 0.5, tracer="jit")
