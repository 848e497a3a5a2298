"""torchvision's classification models, pruned at L1 50% (random init, CPU).

Every model of ``torchvision.models.list_models(module=torchvision.models)`` is a case.
The CI set (one or two models of every family, small inputs) runs by default; the rest
are marked slow and run with ``PYPRUNE_SLOW=1``.  Per model:

* ``ratio=0`` leaves the outputs and the state dict bit-identical;
* in float64, with the weights that produce the channels the plan removes set to zero,
  pruning does not change the outputs (the removed channels were dead; a wrong
  coupling or a wrong slice would show), and the pruned model runs forward and
  backward in train mode with every gradient shaped like its parameter;
* parameters after pruning are within 1.1x of Torch-Pruning's: measured against
  Torch-Pruning itself for a few small models (``TP_LIVE``), against the counts
  recorded from ``benchmarks/bench_zoo.py`` (``TP_PARAMS``) for the rest.  The recorded
  numbers are a regression bound only; the benchmark run verifies them against
  Torch-Pruning 1.6 (same settings as ``bench_zoo.tp_prune``).

The whole module skips, with the reason, when torchvision cannot be imported.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import pyprune
from pyprune.graph import build_graph
from pyprune.plan import make_plan
from pyprune.surgery import apply_plan

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load_bench():
    if not (_BENCH / "bench_zoo.py").exists():
        return None
    if str(_BENCH) not in sys.path:
        sys.path.insert(0, str(_BENCH))
    spec = importlib.util.spec_from_file_location("pyprune_bench_zoo", _BENCH / "bench_zoo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()
if bench is None:
    pytest.skip("benchmarks/bench_zoo.py not found beside tests/", allow_module_level=True)
tv, _how = bench.load_torchvision()
if tv is None:
    pytest.skip(_how, allow_module_level=True)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SLOW = os.environ.get("PYPRUNE_SLOW") == "1"

#: One or two models of every family: run in CI.
#: (AlexNet, VGG, Wide-ResNet and MaxViT are slow only for their size: 61-144 M
#: parameters, copied to float64; AlexNet's parameter bound is checked in CI.)
CI = ["convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3",
      "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf",
      "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t",
      "vit_b_32"]

#: Torch-Pruning run in the test itself (small and quick to prune).
TP_LIVE = ["resnet18", "resnext50_32x4d", "mobilenet_v3_small"]

#: Parameter counts after Torch-Pruning 1.6 at L1 50% (bench_zoo.py, input sizes of
#: bench_zoo.input_size with --size 64): a regression bound, verified by the benchmark.
TP_PARAMS = {
    "alexnet": 16308104, "densenet121": 2274728, "efficientnet_b0": 1701446,
    "mobilenet_v3_small": 911224, "regnet_x_400mf": 1484424, "regnet_y_400mf": 1205092,
    "resnet18": 3055880, "resnext50_32x4d": 6789384,
}

ALL = tv.models.list_models(module=tv.models)


def _cases():
    out = []
    for name in ALL:
        if name in CI:
            out.append(name)
        else:
            out.append(pytest.param(name, marks=[pytest.mark.slow, pytest.mark.skipif(
                not SLOW, reason="slow zoo model: set PYPRUNE_SLOW=1")]))
    return out


def _x(name, dtype=torch.float32):
    s = bench.input_size(name, 64)
    return torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0)).to(dtype)


def _quiet():
    w = warnings.catch_warnings()
    w.__enter__()
    warnings.simplefilter("ignore", pyprune.PruningWarning)
    return w


def _zero_removed(model, graph, plan):
    """Zero the producing slices (role "out") of every channel the plan removes."""
    mask = plan.kept_mask()
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    with torch.no_grad():
        for m in graph.tensor_members:
            if m.role != "out" or m.name.endswith("running_var"):
                continue
            removed = ~mask[graph.member_index(m)]
            if bool(removed.any()):
                idx = removed.nonzero().flatten()
                if m.block > 1:
                    idx = (idx[:, None] * m.block + torch.arange(m.block)).reshape(-1)
                tensors[m.name].index_fill_(m.dim, idx, 0.0)


def test_every_classification_model_is_a_case():
    assert len(ALL) >= 80 and set(CI) <= set(ALL)


@pytest.mark.parametrize("name", _cases())
def test_zoo_model_prunes_exactly_and_runs(name):
    x = _x(name)
    model = bench.make_model(tv, name)
    with torch.no_grad():
        ref = model(x)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    w = _quiet()
    try:
        pyprune.prune(model, x, method="l1", ratio=0.0)
    finally:
        w.__exit__(None, None, None)
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())

    # float64: the removed channels zeroed first, so pruning must not change the output
    model = model.double()
    x64 = x.double()
    graph = build_graph(model, x64)
    scores = pyprune.scores(model, x64, method="l1")
    plan = make_plan(graph, scores, ratio=0.5)
    _zero_removed(model, graph, plan)
    with torch.no_grad():
        before = model(x64)
    dense = bench.n_params(model)
    norms = {n: m.weight.numel() for n, m in model.named_modules()
             if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None}
    apply_plan(model, plan)
    with torch.no_grad():
        after = model(x64)
    # LayerNorm / GroupNorm normalise across channels: removing some of their channels
    # changes the mean and variance they compute (as in Torch-Pruning), so a model with
    # zeroed channels is not the pruned one there.  Everywhere else it must be, exactly.
    cross_channel = any(m.weight.numel() != norms[n] for n, m in model.named_modules()
                        if n in norms)
    if not cross_channel:
        torch.testing.assert_close(after, before, rtol=1e-7, atol=1e-7 * float(before.abs().max()))
    else:
        assert torch.isfinite(after).all() and after.shape == before.shape
    assert (bench.n_params(model) < dense) == (plan.num_removed > 0)
    model = model.float()
    assert bench.runs(model, x) is None
    model.train()
    out = model(x.expand(2, *x.shape[1:]).contiguous())
    (out[0] if isinstance(out, tuple) else out).square().mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is None or p.grad.shape == p.shape, n


@pytest.mark.parametrize("name", _cases())
def test_zoo_model_keeps_training_after_pruning_with_an_old_graph_alive(name):
    """Item 1 on the zoo: train, keep a graph, prune with optimizer=, train on."""
    x2 = _x(name).expand(2, *_x(name).shape[1:]).contiguous()  # BN in train mode needs > 1 sample
    model = bench.make_model(tv, name).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def loss_of():
        out = model(x2)
        return (out[0] if isinstance(out, tuple) else out).float().square().mean()

    loss = loss_of()
    opt.zero_grad()
    loss.backward()
    opt.step()
    kept = loss_of()  # a graph from before pruning, still referenced
    w = _quiet()
    try:
        pyprune.prune(model, _x(name), method="l1", ratio=0.5, optimizer=opt)
    finally:
        w.__exit__(None, None, None)
    for _ in range(2):
        loss = loss_of()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    for n, p in model.named_parameters():
        assert p.grad is None or p.grad.shape == p.shape, n
    with pytest.raises(RuntimeError, match="before pyprune.prune"):
        kept.backward()


@pytest.mark.parametrize("name", sorted(set(TP_PARAMS) | set(TP_LIVE)))
def test_zoo_params_within_1_1x_of_torch_pruning(name):
    x = _x(name)
    model = bench.make_model(tv, name)
    if name in TP_LIVE:
        tp = pytest.importorskip("torch_pruning")
        del tp
        other = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bench.tp_prune(other, x, name)
        if bench.runs(other, x) is not None:
            pytest.skip(f"Torch-Pruning gives no working {name}")
        target = bench.n_params(other)
        if name in TP_PARAMS:
            assert target == TP_PARAMS[name]  # the recorded bound is Torch-Pruning's count
    else:
        target = TP_PARAMS[name]
    w = _quiet()
    try:
        pyprune.prune(model, x, method="l1", ratio=0.5)
    finally:
        w.__exit__(None, None, None)
    assert bench.n_params(model) <= 1.1 * target, (bench.n_params(model), target)
