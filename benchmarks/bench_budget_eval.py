"""Cost of one budget-candidate evaluation: CostModel.evaluate (analytic) against the
alternative a search without it needs per trial (copy the model, apply the plan, profile).
python benchmarks/bench_budget_eval.py   (interleaved, median of 15 after 3 warm-ups, 1 thread)"""
import copy, statistics, time, torch, pyprune, pyprune.criteria as C
from pyprune.graph import build_graph
from pyprune.plan import make_plan
from pyprune.budget import CostModel
from pyprune.surgery import apply_plan
torch.set_num_threads(1)
x = torch.randn(1, 3, 32, 32)
print(f"{'model':12s} {'analytic ms':>12s} {'surgery+profile ms':>19s} {'ratio':>7s}")
for name in ["resnet56", "vgg16_bn", "densenet40", "mobilenetv2"]:
    m = pyprune.models.get_model(name).eval()
    g = build_graph(m, x); s = C.compute("l1", m, x)
    cm = CostModel(g, m, pyprune.profile(m, x))
    plan = make_plan(g, s, ratio=0.4); mask = plan.kept_mask()
    def analytic():
        return cm.evaluate(mask)
    def surgery():
        m2 = copy.deepcopy(m); g2 = build_graph(m2, x)
        p2 = make_plan(g2, s, ratio=0.4); apply_plan(m2, p2)
        pr = pyprune.profile(m2, x); return pr.params, pr.flops
    assert analytic() == surgery()
    ta, ts = [], []
    for i in range(18):
        for f, acc in ((analytic, ta), (surgery, ts)):
            t = time.perf_counter(); f(); acc.append(time.perf_counter() - t)
    a, b = statistics.median(ta[3:]) * 1e3, statistics.median(ts[3:]) * 1e3
    print(f"{name:12s} {a:12.3f} {b:19.1f} {b / a:7.0f}x")
