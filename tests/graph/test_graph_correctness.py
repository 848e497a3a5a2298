"""Random plans on every synthetic structure: the pruned model runs, matches, exports."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from pyprune.criteria.random import random_scores
from pyprune.graph import build_graph
from pyprune.plan import make_plan
from pyprune.surgery import apply_plan

from pyprune_checks import param_count, zero_removed
from pyprune_zoo import ZOO, make

STRUCTURES = sorted(ZOO)

plans = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1),
    "ratio": st.floats(0.05, 0.95),
    "global": st.booleans(),
    "round_to": st.sampled_from([1, 1, 2]),
})


def _plan(model, x, p):
    g = build_graph(model, x)
    kw = {"round_to": p["round_to"]}
    if p["global"]:
        kw["global_ratio"] = p["ratio"]
    else:
        kw["ratio"] = p["ratio"]
    return g, make_plan(g, random_scores(model, seed=p["seed"]), **kw)


@pytest.mark.parametrize("name", STRUCTURES)
@settings(max_examples=6, deadline=None)
@given(p=plans)
def test_random_plan_runs_forward_and_backward(name, p):
    model, x = make(name)
    with torch.no_grad():
        y0 = model(x)
    dense = param_count(model)
    g, plan = _plan(model, x, p)
    apply_plan(model, plan)
    assert (param_count(model) < dense) == (plan.num_removed > 0)
    model.train()
    y = model(x)
    assert y.shape == y0.shape
    y.square().mean().backward()
    for n, prm in model.named_parameters():
        assert prm.grad is not None and prm.grad.shape == prm.shape, n
    # widths recorded on the modules agree with the tensors
    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            assert mod.weight.shape[0] == mod.out_channels
            assert mod.weight.shape[1] * mod.groups == mod.in_channels
        elif isinstance(mod, torch.nn.ConvTranspose2d):
            assert mod.weight.shape[0] == mod.in_channels
            assert mod.weight.shape[1] * mod.groups == mod.out_channels
        elif isinstance(mod, torch.nn.Linear):
            assert tuple(mod.weight.shape) == (mod.out_features, mod.in_features)
        elif isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            assert mod.running_mean.numel() == mod.num_features


@pytest.mark.parametrize("name", STRUCTURES)
@settings(max_examples=6, deadline=None)
@given(p=plans)
def test_removing_zeroed_channels_keeps_outputs(name, p):
    model, x = make(name, torch.float64)
    g, plan = _plan(model, x, p)
    zero_removed(model, g, plan)
    with torch.no_grad():
        ref = model(x)
    apply_plan(model, plan)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", STRUCTURES)
def test_every_prunable_structure_loses_channels(name):
    model, x = make(name)
    g = build_graph(model, x)
    plan = make_plan(g, random_scores(model, seed=1), ratio=0.5)
    assert g.prunable_groups
    assert plan.num_removed > 0
    for gid, keep in plan.keep.items():
        assert keep.numel() == g.groups[gid].size - g.groups[gid].size // 2 or keep.numel() >= 1


JIT_DEPRECATED = "ignore:`torch.jit.trace.*` is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(JIT_DEPRECATED)
@pytest.mark.parametrize("name", [n for n in STRUCTURES if n != "untraceable"])
def test_pruned_model_traces_with_jit_and_export(name):
    model, x = make(name)
    g = build_graph(model, x)
    apply_plan(model, make_plan(g, random_scores(model, seed=3), ratio=0.5))
    with torch.no_grad():
        ref = model(x)
        traced = torch.jit.trace(model, (x,))
        torch.testing.assert_close(traced(x), ref)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), ref)
