"""Budget search sweep over pyprune's reference models (H5).

python benchmarks/bench_budget.py [--json out.json]
For every reference model, data-free criterion, kind (flops/params), target and mode:
prune a fresh model with prune(..., kind=target), check |achieved/target - 1| with
pyprune.profile on the pruned model, and time the planning parts: the dense profile,
the cost model, the search (make_plan with the budget) and the whole prune call.
"""
import argparse, json, statistics, time, warnings
import torch, torch.nn as nn
import pyprune, pyprune.criteria as C
from pyprune.budget import Budget, CostModel
from pyprune.graph import build_graph
from pyprune.plan import PlanConfig, make_plan

ap = argparse.ArgumentParser(); ap.add_argument("--json"); ap.add_argument("--targets", default="0.1,0.2,0.3,0.5,0.7,0.9")
args = ap.parse_args()
torch.set_num_threads(1)
x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
methods = [m for m in ("l1", "l2", "random", "bn", "slim") if m in C.CRITERIA]
targets = [float(t) for t in args.targets.split(",")]
rows = []
for name in pyprune.models.list_models():
    errs, search_ms, cost_ms, prune_ms, evals, unreach = [], [], [], [], [], 0
    for method in methods:
        for kind in ("flops", "params"):
            for mode in ("global", "uniform"):
                for t in targets:
                    torch.manual_seed(0)
                    model = pyprune.models.get_model(name).eval()
                    with torch.no_grad():
                        for m in model.modules():
                            if isinstance(m, nn.BatchNorm2d):
                                m.weight.uniform_(0.1, 1.0)
                    dense = pyprune.profile(model, x)
                    g = build_graph(model, x); s = C.compute(method, model, x)
                    t0 = time.perf_counter(); cm = CostModel(g, model, dense); t1 = time.perf_counter()
                    norm = C.info(method).normalize
                    try:
                        plan = make_plan(g, s, PlanConfig(normalize=norm), budget=Budget(kind, t, cm), budget_mode=mode)
                    except ValueError:
                        unreach += 1
                        continue
                    t2 = time.perf_counter()
                    cost_ms.append(1e3 * (t1 - t0)); search_ms.append(1e3 * (t2 - t1)); evals.append(plan.budget["evaluations"])
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        t3 = time.perf_counter()
                        pyprune.prune(model, x, method, budget_mode=mode, **{kind: t})
                        prune_ms.append(1e3 * (time.perf_counter() - t3))
                    p = pyprune.profile(model, x)
                    got = p.flops / dense.flops if kind == "flops" else p.params / dense.params
                    errs.append(abs(got / t - 1))
    row = dict(model=name, cases=len(errs), unreachable=unreach, within_1pct=sum(e <= 0.01 for e in errs),
               max_err_pct=100 * max(errs), median_err_pct=100 * statistics.median(errs),
               cost_model_ms=statistics.median(cost_ms), search_ms=statistics.median(search_ms),
               max_search_ms=max(search_ms), median_evals=statistics.median(evals), max_evals=max(evals),
               prune_ms=statistics.median(prune_ms))
    rows.append(row)
    print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
if args.json:
    json.dump(dict(methods=methods, targets=targets, rows=rows), open(args.json, "w"), indent=1)
