"""Plans: keep counts, ratios, global ranking, min_channels, round_to, ignore."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from pyprune.graph import build_graph
from pyprune.plan import PlanConfig, group_scores, make_plan


pytestmark = pytest.mark.usefixtures("torch_single_thread")


def cbr(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Net(nn.Module):
    """stem(10) -> residual add with r(10); a(20) -> b(7); classifier."""

    def __init__(self):
        super().__init__()
        self.stem, self.r, self.a, self.b = cbr(3, 10), cbr(10, 10), cbr(10, 20), cbr(20, 7)
        self.fc = nn.Linear(7, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.r(x)
        x = self.b(self.a(x))
        return self.fc(x.mean([2, 3]))


@pytest.fixture(scope="module")
def graph():
    return build_graph(Net(), torch.randn(1, 3, 6, 6))


def arange_scores(graph, model_names=("stem.0", "r.0", "a.0", "b.0", "fc")):
    out = {}
    for n in model_names:
        k = graph.out_index(n).numel()
        out[n] = torch.arange(k, dtype=torch.float32)
    return out


def gid(graph, name):
    return graph.groups_of(name)[0].id


def test_uniform_ratio_keeps_highest_scores(graph):
    plan = make_plan(graph, arange_scores(graph), ratio=0.5)
    assert plan.keep[gid(graph, "a.0")].tolist() == list(range(10, 20))
    assert plan.keep[gid(graph, "b.0")].tolist() == [3, 4, 5, 6]  # 7 - floor(3.5)
    assert gid(graph, "fc") not in plan.keep  # model output
    assert plan.keep[gid(graph, "stem.0")].dtype == torch.int64


def test_coupled_channels_scored_as_sum(graph):
    s = arange_scores(graph)
    s["stem.0"] = torch.tensor([9.0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    s["r.0"] = torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 0, 0, 10])
    flat = group_scores(graph, s)
    g = graph.groups[gid(graph, "stem.0")]
    assert flat[g.offset:g.offset + g.size].tolist() == [9.0] + [0.0] * 8 + [10.0]
    plan = make_plan(graph, s, ratio=0.8)
    assert plan.keep[g.id].tolist() == [0, 9]
    mean = group_scores(graph, s, reduce="mean")
    assert mean[g.offset + 9] == 5.0
    mx = group_scores(graph, s, reduce="max")
    assert mx[g.offset + 9] == 10.0 and mx[g.offset] == 9.0


def test_scores_accept_any_tensor_like(graph):
    s = arange_scores(graph)
    s["a.0"] = np.arange(20, dtype=np.int32)
    s["b.0"] = torch.arange(7, dtype=torch.float16)
    s["stem.0"] = list(range(10))
    plan = make_plan(graph, s, ratio=0.5)
    assert plan.keep[gid(graph, "a.0")].tolist() == list(range(10, 20))


def test_score_errors(graph):
    with pytest.raises(ValueError, match="has 3 entries but a.0 has 20"):
        make_plan(graph, {"a.0": torch.ones(3)})
    with pytest.raises(ValueError, match="NaN"):
        make_plan(graph, {"a.0": torch.full((20,), math.nan)})
    with pytest.raises(TypeError, match="real numbers"):
        make_plan(graph, {"a.0": torch.ones(20, dtype=torch.bool)})


def test_groups_without_scores_are_skipped(graph):
    plan = make_plan(graph, {"a.0": torch.arange(20.0)}, ratio=0.5)
    assert set(plan.keep) == {gid(graph, "a.0")}
    assert "no scores" in plan.skipped[gid(graph, "b.0")]


def test_layer_ratios_override(graph):
    plan = make_plan(graph, arange_scores(graph), ratio=0.5, layer_ratios={"a.0": 0.25})
    assert plan.keep[gid(graph, "a.0")].numel() == 15
    assert plan.keep[gid(graph, "b.0")].numel() == 4
    with pytest.raises(ValueError, match="conflicting"):
        make_plan(graph, arange_scores(graph), layer_ratios={"stem.0": 0.2, "r.0": 0.3})
    with pytest.raises(ValueError, match="does not produce"):
        make_plan(graph, arange_scores(graph), layer_ratios={"nope": 0.2})


def test_min_channels_and_round_to(graph):
    plan = make_plan(graph, arange_scores(graph), ratio=0.9, min_channels=3)
    assert plan.keep[gid(graph, "b.0")].numel() == 3
    assert plan.keep[gid(graph, "a.0")].numel() == 3
    plan = make_plan(graph, arange_scores(graph), ratio=0.5, round_to=4)
    assert plan.keep[gid(graph, "a.0")].numel() == 12
    assert plan.keep[gid(graph, "stem.0")].numel() == 8
    assert gid(graph, "b.0") in plan.keep and plan.keep[gid(graph, "b.0")].numel() == 4
    plan = make_plan(graph, arange_scores(graph), ratio=0.99)
    assert all(k.numel() >= 1 for k in plan.keep.values())


def test_ignore_by_name_and_module(graph):
    model = graph._model_ref
    plan = make_plan(graph, arange_scores(graph), ignore=["a.0", model.r[0]])
    assert gid(graph, "a.0") not in plan.keep and gid(graph, "stem.0") not in plan.keep
    assert plan.skipped[gid(graph, "a.0")] == "ignored"
    assert gid(graph, "b.0") in plan.keep
    plan = make_plan(graph, arange_scores(graph), ignore=["b.1"])  # a BatchNorm: b's group
    assert gid(graph, "b.0") not in plan.keep and gid(graph, "a.0") in plan.keep
    with pytest.raises(ValueError, match="not a module"):
        make_plan(graph, arange_scores(graph), ignore=["nope"])


def test_global_ratio_ranks_across_groups(graph):
    s = arange_scores(graph)
    s["a.0"] = torch.full((20,), 100.0)  # far more important than everything else
    plan = make_plan(graph, s, global_ratio=0.3)
    assert gid(graph, "a.0") not in plan.keep
    total = sum(g.size for g in graph.prunable_groups)
    assert plan.num_removed == math.floor(0.3 * total)
    norm = make_plan(graph, s, global_ratio=0.3, normalize="mean")
    assert gid(graph, "a.0") in norm.keep  # after normalisation a.0 is not special


@pytest.mark.parametrize("bad", [
    {"ratio": 1.0}, {"ratio": -0.1}, {"ratio": "half"}, {"min_channels": 0},
    {"round_to": 0}, {"reduce": "median"}, {"normalize": "l2"}, {"global_ratio": 2},
    {"layer_ratios": {"a.0": 1.5}},
])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        PlanConfig(**bad)


def test_config_object_and_overrides(graph):
    cfg = PlanConfig(ratio=0.25)
    p1 = make_plan(graph, arange_scores(graph), cfg)
    p2 = make_plan(graph, arange_scores(graph), cfg, ratio=0.5)
    assert p1.keep[gid(graph, "a.0")].numel() == 15
    assert p2.keep[gid(graph, "a.0")].numel() == 10
    assert "group" in p2.summary()


@settings(max_examples=25, deadline=None)
@given(ratio=st.floats(0, 0.99), round_to=st.integers(1, 5), min_ch=st.integers(1, 12),
       seed=st.integers(0, 1000), use_global=st.booleans())
def test_plan_invariants(graph, ratio, round_to, min_ch, seed, use_global):
    gen = torch.Generator().manual_seed(seed)
    s = {n: torch.rand(graph.out_index(n).numel(), generator=gen)
         for n in ("stem.0", "r.0", "a.0", "b.0", "fc")}
    kw = {"global_ratio": ratio} if use_global else {"ratio": ratio}
    plan = make_plan(graph, s, round_to=round_to, min_channels=min_ch, **kw)
    for g_id, keep in plan.keep.items():
        g = graph.groups[g_id]
        assert g.prunable
        assert keep.dtype == torch.int64 and keep.dim() == 1
        assert 1 <= keep.numel() < g.size
        assert keep.numel() >= min(min_ch, g.size)
        assert bool((keep[1:] > keep[:-1]).all())
        assert keep.numel() % round_to == 0 or keep.numel() >= min_ch


def test_min_channels_holds_for_every_layer_of_a_coupled_group():
    class CatAdd(nn.Module):
        """cat(a, b) + c: a and b each hold part of one group."""

        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = cbr(3, 4), cbr(3, 4), cbr(3, 8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)], 1) + self.c(x)
            return self.fc(y.mean([2, 3]))

    g = build_graph(CatAdd(), torch.randn(1, 3, 4, 4))
    grp = g.groups_of("c.0")[0]
    assert set(grp.producers) == {"a.0", "b.0", "c.0"}
    s = {"c.0": torch.tensor([0.0, 0, 0, 0, 5, 6, 7, 8])}  # b's channels win outright
    plan = make_plan(g, s, ratio=0.5)
    assert plan.keep[grp.id].tolist() == [0, 4, 5, 6, 7]  # a.0 would be zero-width otherwise
    plan = make_plan(g, s, ratio=0.75, min_channels=1)
    keep = plan.keep[grp.id].tolist()
    assert any(i < 4 for i in keep) and any(i >= 4 for i in keep)  # a.0 keeps one channel
    assert 7 in keep


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_group_scores_fast_path_equals_the_per_layer_path(graph, reduce):
    from pyprune.plan import _group_scores_checked

    torch.manual_seed(0)
    s = {name: torch.randn(len(el) * b) for name, (el, b) in graph.out_maps.items()}
    names = list(s)
    s[names[0]] = s[names[0]].double()  # mixed dtypes
    s[names[1]] = torch.randn(2 * s[names[1]].numel())[::2]  # a strided view
    s[names[2]] = s[names[2]].clone().requires_grad_()
    s[names[3]] = torch._neg_view(s[names[3]])  # what numpy cannot view: the per-layer path
    fast = group_scores(graph, s, reduce)
    ref = _group_scores_checked(graph, s, reduce)
    assert torch.equal(torch.nan_to_num(fast, 123.0), torch.nan_to_num(ref, 123.0))
    del s[names[3]]
    fast = group_scores(graph, s, reduce)
    ref = _group_scores_checked(graph, s, reduce)
    assert torch.equal(torch.nan_to_num(fast, 123.0), torch.nan_to_num(ref, 123.0))
    assert fast.isnan().any()  # the channels of the layer without scores
