"""FLOPs / parameter budgets: prune(flops=..., params=...) on every reference model,
checked against pyprune.profile of the pruned model; errors leave the model unchanged."""
from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import pyprune
import pyprune.criteria as criteria
from pyprune.budget import TOLERANCE, Budget, CostModel
from pyprune.graph import build_graph
from pyprune.plan import make_plan
from pyprune.summary import last_summary
from pyprune.surgery import apply_plan

pytestmark = pytest.mark.usefixtures("torch_single_thread")

models = pyprune.models
REFERENCE = models.list_models()
X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
# criteria that need no data; bn / slim when their modules exist
NO_DATA = [m for m in ("l1", "l2", "random", "bn", "slim") if m in criteria.CRITERIA]


def fresh(name):
    torch.manual_seed(0)
    model = models.get_model(name).eval()
    with torch.no_grad():  # distinct BN scales, so that bn / slim have something to rank
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
    return model


def snapshot(model):
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    attrs = {n: dict(vars(m)) for n, m in model.named_modules()}
    return state, {n: {k: v for k, v in a.items() if isinstance(v, (int, float, tuple, str))}
                   for n, a in attrs.items()}


def assert_unchanged(model, snap):
    state, attrs = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert now[k].shape == v.shape and torch.equal(now[k], v), k
    for n, m in model.named_modules():
        for k, v in attrs[n].items():
            assert getattr(m, k) == v, (n, k)
    assert last_summary(model) is None


def achieved(model, dense, kind):
    p = pyprune.profile(model, X)
    return (p.flops / dense.flops) if kind == "flops" else (p.params / dense.params)


# Every reference model, each with the data-free criteria, FLOPs and parameter targets
# spread over (0, 1) (a deterministic spread keeps the file fast).
CASES = []
_targets = [0.5, 0.3, 0.7, 0.2, 0.6, 0.45, 0.8, 0.35]
for i, name in enumerate(REFERENCE):
    for j, method in enumerate(NO_DATA):
        kind = ("flops", "params")[(i + j) % 2]
        CASES.append((name, method, kind, _targets[(i + 3 * j) % len(_targets)]))


@pytest.mark.parametrize("name,method,kind,target", CASES)
def test_budget_hits_target_on_reference_models(name, method, kind, target):
    model = fresh(name)
    dense = pyprune.profile(model, X)
    pyprune.prune(model, X, method, **{kind: target})
    got = achieved(model, dense, kind)
    assert abs(got / target - 1) <= TOLERANCE, (got, target)
    s = last_summary(model)
    assert s.budget["kind"] == kind and s.budget["met"]
    assert s.budget["achieved"] == pytest.approx(got, rel=1e-12, abs=0)  # analytic == profile
    assert s.params_after == pyprune.profile(model, X).params
    assert model(X).shape == (1, 10)


@pytest.mark.parametrize("name", REFERENCE)
@pytest.mark.parametrize("kind", ["flops", "params"])
def test_uniform_budget_mode_hits_target_and_keeps_groups_uniform(name, kind):
    model = fresh(name)
    dense = pyprune.profile(model, X)
    g = build_graph(model, X)
    sizes = {grp.id: grp.size for grp in g.prunable_groups}
    pyprune.prune(model, X, "l1", budget_mode="uniform", **{kind: 0.4})
    got = achieved(model, dense, kind)
    assert abs(got / 0.4 - 1) <= TOLERANCE, got
    g2 = build_graph(model, X)
    fracs = [grp.size / sizes[grp.id] for grp in g2.prunable_groups]
    # every group keeps the same fraction to within one channel of its size
    lo = max(f - 1 / sizes[grp.id] for f, grp in zip(fracs, g2.prunable_groups))
    hi = min(f + 1 / sizes[grp.id] for f, grp in zip(fracs, g2.prunable_groups))
    assert lo <= hi + 1e-9, fracs


def test_cost_model_equals_profile_for_random_masks():
    for name in ("resnet20", "densenet40", "mobilenetv2", "vgg11_bn"):
        model = fresh(name)
        g = build_graph(model, X)
        cost = CostModel(g, model, pyprune.profile(model, X))
        assert cost.evaluate(np.ones(g.num_channels, bool)) == (cost.dense_params,
                                                                cost.dense_flops)
        plan = make_plan(g, criteria.compute("random", model, X, seed=1), ratio=0.6)
        predicted = cost.evaluate(plan.kept_mask())
        apply_plan(model, plan)
        p = pyprune.profile(model, X)
        assert predicted == (p.params, p.flops), name


def test_search_is_a_bisection_without_surgery():
    model = fresh("resnet56")
    snap = snapshot(model)
    g = build_graph(model, X)
    cost = CostModel(g, model, pyprune.profile(model, X))
    plan = make_plan(g, criteria.compute("l1", model, X), budget=Budget("flops", 0.5, cost),
                     normalize="mean")
    assert_unchanged(model, snap)  # planning never touches the model
    b = plan.budget
    assert b["evaluations"] <= math.ceil(math.log2(b["order_length"] + 1)) + 3
    assert abs(b["achieved"] / 0.5 - 1) <= TOLERANCE


def test_global_search_follows_the_scores():
    """Normalized scores: a group whose scores are far below the others' loses channels
    first; the uniform order takes the same fraction from each."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    x = torch.randn(1, 3, 8, 8)
    g = build_graph(model, x)
    cost = CostModel(g, model, pyprune.profile(model, x))
    s = {"0": torch.linspace(1, 2, 16), "2": torch.cat([torch.full((8,), 0.01), torch.ones(8)]),
         "4": torch.linspace(1, 2, 16), "8": torch.ones(4)}
    plan = make_plan(g, s, budget=Budget("params", 0.6, cost), normalize="mean")
    kept = {grp.producers[0]: plan.keep.get(grp.id, torch.arange(grp.size))
            for grp in g.prunable_groups}
    assert kept["0"].numel() == 16 and kept["4"].numel() == 16
    assert 8 < kept["2"].numel() < 16 and set(range(8, 16)) <= set(kept["2"].tolist())
    plan = make_plan(g, s, budget=Budget("params", 0.8, cost), budget_mode="uniform")
    kept = [plan.keep.get(grp.id, torch.arange(grp.size)).numel() for grp in g.prunable_groups]
    assert max(kept) - min(kept) <= 1


def _closest(msg):
    m = re.search(r"closest reachable value is (flops|params)=([0-9.]+)", msg)
    assert m, msg
    return m.group(1), float(m.group(2))


def test_unreachable_budget_names_the_closest_reachable_value():
    model = fresh("resnet20")
    snap = snapshot(model)
    with pytest.raises(ValueError, match="flops=0.001 is not reachable") as e:
        pyprune.prune(model, X, "l1", flops=0.001)
    assert_unchanged(model, snap)
    kind, value = _closest(str(e.value))
    assert "min_channels=1" in str(e.value)
    dense = pyprune.profile(model, X)
    pyprune.prune(model, X, "l1", flops=value)  # the named value is reachable
    assert abs(achieved(model, dense, "flops") / value - 1) <= TOLERANCE


def test_unreachable_because_of_min_channels_and_ignore():
    model = fresh("vgg11_bn")
    snap = snapshot(model)
    with pytest.raises(ValueError, match="min_channels=128") as e:
        pyprune.prune(model, X, "l2", params=0.05, min_channels=128)
    assert_unchanged(model, snap)
    _, v_min = _closest(str(e.value))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with pytest.raises(ValueError, match="ignored group") as e:
        pyprune.prune(model, X, "l2", params=0.1, ignore=convs[4:])
    assert_unchanged(model, snap)
    _, v_ign = _closest(str(e.value))
    assert 0.05 < v_min < 1 and 0.1 < v_ign < 1
    dense = pyprune.profile(model, X)
    pyprune.prune(model, X, "l2", params=v_ign, ignore=convs[4:])
    assert abs(achieved(model, dense, "params") / v_ign - 1) <= TOLERANCE
    assert [m.out_channels for n, m in model.named_modules() if n in convs[4:]] == \
        [512] * len(convs[4:])


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (0.0, ValueError), (1.5, ValueError),
                                     (-0.2, ValueError), (float("nan"), ValueError),
                                     (True, TypeError), ("0.5", TypeError), ([0.5], TypeError)])
@pytest.mark.parametrize("kind", ["flops", "params"])
def test_budget_out_of_range_names_the_argument(kind, bad, exc):
    model = fresh("resnet20")
    snap = snapshot(model)
    with pytest.raises(exc, match=kind):
        pyprune.prune(model, X, "l1", **{kind: bad})
    assert_unchanged(model, snap)


@pytest.mark.parametrize("kw,match", [
    (dict(ratio=0.5, flops=0.5), "ratio or flops"),
    (dict(ratio=0.3, params=0.5), "ratio or params"),
    (dict(flops=0.5, params=0.5), "flops or params"),
    (dict(flops=0.5, global_ratio=0.3), "flops or global_ratio"),
    (dict(ratio=0.5, global_ratio=0.3), "ratio or global_ratio"),
    (dict(ratio=0.5, budget_mode="uniform"), "budget_mode"),
    (dict(flops=0.5, budget_mode="even"), "budget_mode"),
])
def test_conflicting_targets_are_one_clear_error(kw, match):
    model = fresh("resnet20")
    snap = snapshot(model)
    with pytest.raises((ValueError, TypeError), match=match):
        pyprune.prune(model, X, "l1", **kw)
    assert_unchanged(model, snap)


def test_budget_one_keeps_everything_without_warning():
    model = fresh("resnet20")
    dense = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pyprune.prune(model, X, "l1", flops=1.0)
    assert sum(p.numel() for p in model.parameters()) == dense


def test_coarse_round_to_warns_that_the_budget_is_approximate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.warns(pyprune.PruningWarning, match="approximately"):
        pyprune.prune(model, x, "l1", flops=0.6, round_to=8)
    s = last_summary(model)
    assert not s.budget["met"] and s.warnings and "approximately" in s.warnings[0]
    assert model[0].out_channels % 8 == 0 and model[2].out_channels % 8 == 0


def test_layer_ratios_are_fixed_during_a_budget_search():
    model = fresh("resnet20")
    dense = pyprune.profile(model, X)
    pyprune.prune(model, X, "l1", flops=0.5, layer_ratios={"layer3.0.conv1": 0.25})
    assert model.layer3[0].conv1.out_channels == 64 - 16
    assert abs(achieved(model, dense, "flops") / 0.5 - 1) <= TOLERANCE


def test_second_budget_is_relative_to_the_model_given():
    model = fresh("resnet32")
    pyprune.prune(model, X, "l1", params=0.6)
    mid = pyprune.profile(model, X)
    pyprune.prune(model, X, "l1", params=0.5)
    assert abs(pyprune.profile(model, X).params / mid.params / 0.5 - 1) <= TOLERANCE


DATA_METHODS = [m for m in sorted(criteria.CRITERIA) if criteria.info(m).data == "required"]


@pytest.mark.parametrize("method", DATA_METHODS)
@pytest.mark.parametrize("kind", ["flops", "params"])
def test_budget_with_data_driven_methods(method, kind):
    model = fresh("resnet20")
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g))
            for _ in range(2)]
    dense = pyprune.profile(model, X)
    pyprune.prune(model, X, method, data=data, progress=False, **{kind: 0.5})
    assert abs(achieved(model, dense, kind) / 0.5 - 1) <= TOLERANCE
