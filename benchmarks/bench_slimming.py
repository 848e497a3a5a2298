"""Network Slimming regularizer: pyprune.slimming vs Torch-Pruning's BNScalePruner.

Workload: a ResNet-56 (pyprune.models.resnet56, 57 BatchNorms) training step on CIFAR
shapes (batch 64, 3x32x32, cross-entropy, SGD with momentum) on the CPU.

Correctness first: on two copies of the model holding the same gradients, pyprune's
``reg.step()`` and ``tp.pruner.BNScalePruner(...).regularize(model)`` must give
identical BatchNorm gradients (both add ``reg * sign(gamma)``).

Then, medians of interleaved runs after a warm-up:

* the regularizer alone, on the gradients of one real backward: pyprune's fused
  ``reg.step()`` against ``BNScalePruner.regularize(model)`` (each sample times
  ``--calls`` consecutive calls; the order of the two alternates from run to run);
* one training step (forward + backward + SGD step) without the regularizer, and the
  regularizer's cost as a share of it;
* the same step with the regularizer inside ``opt.step()`` (``optimizer=``), interleaved
  with the plain step (the end-to-end difference; below the machine's noise).

    python benchmarks/bench_slimming.py [--runs 15] [--calls 50] [--steps 7] [--threads N] [--json PATH]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, print_table, write_json  # noqa: E402

import pyprune  # noqa: E402
from pyprune.slimming import slimming  # noqa: E402

LAM = 1e-5


def bns(m: nn.Module) -> List[nn.Module]:
    return [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]


def batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tp) -> None:
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    for m in (a, b):
        with torch.no_grad():
            for bn in bns(m):  # random signs, a few exact zeros
                bn.weight.copy_(torch.randn(bn.weight.shape, generator=torch.Generator()
                                            .manual_seed(bn.weight.numel())))
                bn.weight[::7] = 0.0
    for m in (a, b):
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)
    before = [bn.weight.grad.clone() for bn in bns(a)]
    slimming(a, lam=LAM).step()
    pr = tp.pruner.BNScalePruner(b, x[:1], importance=tp.importance.BNScaleImportance(), reg=LAM)
    pr.regularize(b)
    for ba, bb, g in zip(bns(a), bns(b), before):
        assert torch.equal(ba.weight.grad, bb.weight.grad), "pyprune and Torch-Pruning differ"
        assert not torch.equal(ba.weight.grad, g)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)


def time_calls(fn: Callable[[], None], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15, help="timed samples of the regularizers")
    ap.add_argument("--calls", type=int, default=50, help="regularizer calls per sample")
    ap.add_argument("--steps", type=int, default=7, help="timed training steps of each kind")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    import torch_pruning as tp

    torch.manual_seed(0)
    model = pyprune.models.resnet56().train()
    x, y = batch(args.batch)
    check(model, x[:8], y[:8], tp)
    print("correctness: pyprune reg.step() == BNScalePruner.regularize() on all 57 BatchNorms")

    # --- the regularizers alone, on real gradients
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    reg = slimming(model, lam=LAM)
    pruner = tp.pruner.BNScalePruner(model, x[:1], importance=tp.importance.BNScaleImportance(),
                                     reg=LAM)
    fns = {"pyprune": reg.step, "tp": lambda: pruner.regularize(model)}
    t: Dict[str, List[float]] = {k: [] for k in fns}
    for k in fns:  # warm-up
        time_calls(fns[k], args.calls)
    for r in range(args.runs):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in order:
            t[k].append(time_calls(fns[k], args.calls))
    reg_ours, reg_tp = statistics.median(t["pyprune"]), statistics.median(t["tp"])

    # --- training steps: plain, and with the regularizer in opt.step()
    def make_step(hooked: bool) -> Callable[[], None]:
        m = copy.deepcopy(model)
        o = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        if hooked:
            slimming(m, lam=LAM, optimizer=o)

        def step() -> None:
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
        return step

    steps = {"plain": make_step(False), "hooked": make_step(True)}
    ts: Dict[str, List[float]] = {k: [] for k in steps}
    for k in steps:
        steps[k]()
    for r in range(args.steps):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]
        for k in order:
            t0 = time.perf_counter()
            steps[k]()
            ts[k].append(time.perf_counter() - t0)
    step_plain, step_hooked = statistics.median(ts["plain"]), statistics.median(ts["hooked"])
    step_min = min(ts["plain"] + ts["hooked"])  # the least disturbed step: the strictest share

    def share(v: float) -> str:
        return f"{v / step_plain * 100:.3f}% / {v / step_min * 100:.3f}%"

    rows = [
        ["regularizer, pyprune reg.step()", f"{reg_ours * 1e6:.1f} us", share(reg_ours)],
        ["regularizer, tp BNScalePruner.regularize", f"{reg_tp * 1e6:.1f} us", share(reg_tp)],
        ["speed-up (tp / pyprune)", f"{reg_tp / reg_ours:.1f}x", ""],
        ["training step (fwd+bwd+SGD), batch %d" % args.batch, f"{step_plain * 1e3:.1f} ms",
         f"fastest {step_min * 1e3:.1f} ms"],
        ["training step with the hooked regularizer", f"{step_hooked * 1e3:.1f} ms",
         f"{step_hooked / step_plain * 100:.1f}% of plain"],
    ]
    print_table(["ResNet-56, CPU", "median", "share of median / fastest step"], rows)
    meta = machine("cpu")
    print(f"machine: {meta}")
    write_json(args.json, [{
        "bench": "slimming_regularizer", "model": "resnet56", "batch": args.batch,
        "runs": args.runs, "calls": args.calls, "steps": args.steps,
        "reg_pyprune_s": reg_ours, "reg_tp_s": reg_tp, "speedup": reg_tp / reg_ours,
        "step_s": step_plain, "step_hooked_s": step_hooked, "step_fastest_s": step_min,
        "threads": torch.get_num_threads(),
        "reg_share_of_step": reg_ours / step_plain,
        "samples": {"reg_pyprune": t["pyprune"], "reg_tp": t["tp"], "step": ts["plain"],
                    "step_hooked": ts["hooked"]},
    }], meta)


if __name__ == "__main__":
    main()
