"""Graph build + surgery: pyprune vs Torch-Pruning, L1 filter pruning at 50%.

For each model, on a fresh copy each run (the copy is not timed):

* pyprune: ``build_graph`` (eager tracing, the default) + L1 scores + plan + ``apply_plan``
  (one batched ``select_channels_`` call), i.e. what ``pyprune.prune(model, x, "l1", 0.5)``
  does, with the graph and surgery phases also reported on their own;
* Torch-Pruning: ``tp.pruner.MetaPruner`` construction (its dependency graph) +
  ``pruner.step()`` with ``MagnitudeImportance(p=1)``, ``pruning_ratio=0.5``, the
  classifier ignored.

Correctness first: both pruned models must run and give ``(1, 10)`` outputs, and
their parameter counts are reported (they should be equal: both remove half of
every prunable group).  Reports the median of ``--runs`` runs; prints a table and
writes ``--json``.  Torch-Pruning (``pip install torch-pruning``) is optional: without
it its columns are skipped.

    python benchmarks/bench_prune.py --runs 3 --json bench_out/prune.json
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

import pyprune
import pyprune.criteria as criteria
from pyprune.graph import build_graph
from pyprune.models import densenet40, resnet56, vgg16_bn
from pyprune.plan import make_plan
from pyprune.surgery import apply_plan

try:
    import torch_pruning as tp
except ImportError:  # pragma: no cover - optional benchmark dependency
    tp = None

MODELS: Dict[str, Callable[[], nn.Module]] = {
    "vgg16_bn": lambda: vgg16_bn(),
    "resnet56": lambda: resnet56(),
    "densenet40": lambda: densenet40(),
    "vgg16_bn_x4": lambda: vgg16_bn(width=4),
}


def _tp_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch-pruning")
    except Exception:  # noqa: BLE001
        return "unknown"


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_pyprune(model: nn.Module, x: torch.Tensor, ratio: float) -> Dict[str, float]:
    t0 = time.perf_counter()
    graph = build_graph(model, x)
    t1 = time.perf_counter()
    scores = criteria.compute("l1", model, x)
    plan = make_plan(graph, scores, ratio=ratio)
    t2 = time.perf_counter()
    apply_plan(model, plan)
    t3 = time.perf_counter()
    return {"graph": t1 - t0, "plan": t2 - t1, "surgery": t3 - t2, "total": t3 - t0}


def run_tp(model: nn.Module, x: torch.Tensor, ratio: float) -> Dict[str, float]:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[last])
    t1 = time.perf_counter()
    pruner.step()
    t2 = time.perf_counter()
    return {"graph": t1 - t0, "step": t2 - t1, "total": t2 - t0}


def bench(name: str, factory: Callable[[], nn.Module], runs: int, ratio: float,
          use_tp: bool) -> Dict[str, Any]:
    torch.manual_seed(0)
    base = factory().eval()
    x = torch.randn(1, 3, 32, 32)
    row: Dict[str, Any] = {"model": name, "dense_params": n_params(base), "runs": runs}
    engines = [("pyprune", run_pyprune)] + ([("torch_pruning", run_tp)] if use_tp else [])
    times: Dict[str, Dict[str, List[float]]] = {e: {} for e, _ in engines}
    params: Dict[str, int] = {}
    for _ in range(runs):  # engines interleaved, so both see the same machine load
        for engine, fn in engines:
            model = copy.deepcopy(base)
            gc.collect()
            t = fn(model, x, ratio)
            with torch.no_grad():
                out = model(x)
            if out.shape != (1, 10) or not bool(torch.isfinite(out).all()):
                raise SystemExit(f"{engine} produced a broken {name}: output {tuple(out.shape)}")
            p = n_params(model)
            if params.setdefault(engine, p) != p:
                raise SystemExit(f"{engine}: {name} params differ between runs")
            for k, v in t.items():
                times[engine].setdefault(k, []).append(v)
            del model
    for engine, _ in engines:
        row[engine] = {k: statistics.median(v) for k, v in times[engine].items()}
        row[engine]["params"] = params[engine]
    if use_tp:
        row["params_equal"] = row["pyprune"]["params"] == row["torch_pruning"]["params"]
        row["speedup"] = row["torch_pruning"]["total"] / row["pyprune"]["total"]
    return row


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per model (median)")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for both engines (default: torch's default)")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.runs < 3:
        ap.error("--runs must be >= 3 (median of at least three runs)")
    use_tp = tp is not None
    if not use_tp:
        print("torch-pruning is not importable: skipping its columns "
              "(pip install torch-pruning to compare)")
    rows = [bench(n, MODELS[n], args.runs, args.ratio, use_tp) for n in args.models]

    head = f"{'model':<12} {'dense params':>13} | {'pyprune params':>14} {'graph s':>8} " \
           f"{'surgery s':>9} {'total s':>8}"
    if use_tp:
        head += f" | {'TP params':>11} {'TP graph s':>10} {'TP step s':>9} {'TP total s':>10} " \
                f"{'equal':>5} {'speedup':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        p = r["pyprune"]
        line = (f"{r['model']:<12} {r['dense_params']:>13,} | {p['params']:>14,} "
                f"{p['graph']:>8.3f} {p['surgery']:>9.3f} {p['total']:>8.3f}")
        if use_tp:
            t = r["torch_pruning"]
            line += (f" | {t['params']:>11,} {t['graph']:>10.3f} {t['step']:>9.3f} "
                     f"{t['total']:>10.3f} {str(r['params_equal']):>5} {r['speedup']:>6.2f}x")
        print(line)
    print(f"median of {args.runs} runs; pyprune total = graph + L1 scores + plan + surgery; "
          f"ratio {args.ratio}; torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (f"; torch-pruning {_tp_version()}" if use_tp else ""))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        meta = {"torch": torch.__version__, "pyprune": pyprune.__version__,
                "torch_pruning": _tp_version() if use_tp else None,
                "python": platform.python_version(), "threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(), "ratio": args.ratio, "runs": args.runs}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
