"""Zoo coverage: pyprune against Torch-Pruning on torchvision's classification models.

For every model of ``torchvision.models.list_models(module=torchvision.models)``
(random init, CPU, eval mode) this script

1. checks that ``pyprune.prune(..., ratio=0.0)`` leaves the model's outputs and
   state dict bit-identical (zero-channel exactness);
2. prunes a fresh copy with ``pyprune.prune(model, x, method="l1", ratio=0.5)`` and
   another with Torch-Pruning's ``MagnitudePruner`` (``MagnitudeImportance(p=1)``,
   ``pruning_ratio=0.5``, final classifier ignored, ``global_pruning=False``);
3. runs forward + backward on each pruned model and records parameters / FLOPs
   (``pyprune.profile``) before and after, the time of each prune call and, where
   pyprune prunes less than asked, the reasons from ``graph.explain()`` (counted per
   op).

Usage::

    python benchmarks/bench_zoo.py                       # every model
    python benchmarks/bench_zoo.py --models resnet18,resnext50_32x4d --json out.json
    python benchmarks/bench_zoo.py --max-params 100e6    # skip the giant ones
    python benchmarks/bench_zoo.py --tp-timeout 600      # Torch-Pruning in a subprocess, 10 min each
    python benchmarks/bench_zoo.py --models timm:ghostnet_100,timm:rexnet_100   # timm models

Input size: ``--size`` (default 64) for the CNNs; 224 for the models with fixed
sizes (ViT, MaxViT) and for Swin (window partition), 96 for Inception-v3.
"""
from __future__ import annotations

import argparse
import collections
import copy
import gc
import json
import os
import platform
import sys
import time
import traceback
import warnings
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tv import load_torchvision  # noqa: E402

import pyprune  # noqa: E402
from pyprune.graph import build_graph  # noqa: E402

FIXED_SIZE = {"vit": 224, "maxvit": 224, "swin": 224}
MIN_SIZE = {"inception_v3": 96}


def input_size(name: str, default: int) -> int:
    for prefix, s in FIXED_SIZE.items():
        if name.startswith(prefix):
            return s
    return max(default, MIN_SIZE.get(name, 0))


def make_model(tv: Any, name: str) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("timm:"):  # a timm model (timm must import)
        import timm
        return timm.create_model(name[len("timm:"):], pretrained=False).eval()
    kw: Dict[str, Any] = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kw.update(aux_logits=False, init_weights=False)
    return tv.models.get_model(name, **kw).eval()


def classifier_layers(model: nn.Module, num_classes: int = 1000) -> List[nn.Module]:
    return [m for m in model.modules()
            if (isinstance(m, nn.Linear) and m.out_features == num_classes)
            or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(pyprune.profile(model, x).flops)


def runs(model: nn.Module, x: torch.Tensor) -> Optional[str]:
    """None if forward + backward run and the output has the dense shape, else why."""
    try:
        model.train()
        out = model(x.expand(2, *x.shape[1:]).contiguous())  # BN in train mode needs > 1 sample
        if isinstance(out, tuple):
            out = out[0]
        if out.shape[-1] != 1000:
            return f"output shape {tuple(out.shape)}"
        out.float().square().mean().backward()
        model.eval()
        with torch.no_grad():
            model(x)
        return None
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)


def reasons_of(model: nn.Module, x: torch.Tensor) -> Dict[str, int]:
    """Unprunable groups, counted per first reason (op names kept, node names dropped)."""
    g = build_graph(model, x)
    c: collections.Counter = collections.Counter()
    for grp in g.groups:
        if grp.reasons and grp.reasons != ["model output"]:
            r = [r for r in grp.reasons if r != "model output"][0]
            c[_strip_node(r)] += grp.size
    return dict(c.most_common(6))


def _strip_node(r: str) -> str:
    import re
    return re.sub(r" \(node [^)]*\)", "", r)[:140]


def tp_prune(model: nn.Module, x: torch.Tensor, name: str) -> None:
    import torch_pruning as tp

    kw: Dict[str, Any] = {}
    ignored = classifier_layers(model)
    if name.startswith("vit"):
        kw["num_heads"] = {m: m.num_heads for m in model.modules()
                           if isinstance(m, nn.MultiheadAttention)}
        kw["unwrapped_parameters"] = [(model.class_token, 2), (model.encoder.pos_embedding, 2)]
        ignored = ignored + [model.heads]
    if name.startswith("convnext"):
        kw["unwrapped_parameters"] = [(m.layer_scale, 0) for m in model.modules()
                                      if hasattr(m, "layer_scale")]
    pruner = tp.pruner.MagnitudePruner(
        model, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5, ignored_layers=ignored, global_pruning=False, **kw)
    pruner.step()


def tp_one(dense: nn.Module, x: torch.Tensor, name: str) -> Dict[str, Any]:
    """Torch-Pruning on a copy of ``dense``: params, FLOPs, time and whether it runs."""
    row: Dict[str, Any] = {}
    mt = copy.deepcopy(dense)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tp_prune(mt, x, name)
        row["tp_time"] = time.perf_counter() - t0
        row["tp_params"] = n_params(mt)
        row["tp_run"] = runs(mt, x)
        row["tp_flops"] = flops(mt, x) if row["tp_run"] is None else None
    except Exception as e:  # noqa: BLE001
        row["tp_time"] = time.perf_counter() - t0
        row["tp_run"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return row


def tp_isolated(name: str, size: int, timeout: float) -> Dict[str, Any]:
    """:func:`tp_one` in a fresh process (same seed, same model), killed after ``timeout`` s.

    Torch-Pruning's graph tracing grows without bound on some transformers (> 8.8 GB
    and > 22 min on swin_t here); a subprocess keeps one model from stalling the table.
    """
    import subprocess

    t0 = time.perf_counter()
    cmd = [sys.executable, os.path.abspath(__file__), "--_tp-child", name, str(size),
           "--threads", str(torch.get_num_threads())]  # as many threads as pyprune had
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"tp_time": time.perf_counter() - t0, "tp_run": f"timeout: no result in {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1][:160]
        return {"tp_time": time.perf_counter() - t0, "tp_run": f"exit {out.returncode}: {tail}"}
    return json.loads(lines[-1])


def _tp_child(name: str, size: int) -> int:
    tv, how = load_torchvision()
    if tv is None:
        print(f"torchvision unavailable: {how}", file=sys.stderr)
        return 1
    s = input_size(name, size)
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    print(json.dumps(tp_one(make_model(tv, name), x, name)), flush=True)
    return 0


def bench_one(tv: Any, name: str, size: int, do_tp: bool,
              tp_timeout: Optional[float] = None) -> Dict[str, Any]:
    s = input_size(name, size)
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    dense = make_model(tv, name)
    row: Dict[str, Any] = {"model": name, "input": s}
    row["params"] = n_params(dense)
    row["flops"] = flops(dense, x)
    with torch.no_grad():
        ref = dense(x)
    # zero-channel exactness
    m0 = copy.deepcopy(dense)
    sd = {k: v.clone() for k, v in m0.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pyprune.prune(m0, x, method="l1", ratio=0.0)
            with torch.no_grad():
                out0 = m0(x)
            sd0 = m0.state_dict()
            row["exact0"] = bool(torch.equal(out0, ref)) and sd.keys() == sd0.keys() and all(
                torch.equal(sd[k], sd0[k]) for k in sd)
        except Exception as e:  # noqa: BLE001
            row["exact0"] = f"{type(e).__name__}: {e}"[:160]
    del m0
    # pyprune
    m = copy.deepcopy(dense)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            pyprune.prune(m, x, method="l1", ratio=0.5)
            row["pp_error"] = None
        except Exception as e:  # noqa: BLE001
            row["pp_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    row["pp_time"] = time.perf_counter() - t0
    row["pp_warnings"] = [str(x.message)[:200] for x in w][:3]
    row["pp_params"] = n_params(m)
    row["pp_flops"] = flops(m, x) if row["pp_error"] is None else None
    row["pp_run"] = runs(m, x) if row["pp_error"] is None else row["pp_error"]
    del m
    row["reasons"] = reasons_of(dense, x)
    # Torch-Pruning
    row.update(tp_params=None, tp_flops=None, tp_time=None, tp_run="not run")
    if do_tp:
        if tp_timeout is None:
            row.update(tp_one(dense, x, name))
        else:
            row.update(tp_isolated(name, size, tp_timeout))
    if row["tp_run"] is None and row["tp_params"]:
        row["ratio_vs_tp"] = row["pp_params"] / row["tp_params"]
    else:
        row["ratio_vs_tp"] = None
    del dense
    gc.collect()
    return row


def fmt_table(rows: List[Dict[str, Any]]) -> str:
    def m(v: Optional[int]) -> str:
        return "-" if v is None else f"{v / 1e6:.2f}"

    def g(v: Optional[int]) -> str:
        return "-" if v is None else f"{v / 1e9:.3f}"

    def ok(v: Any) -> str:
        return "ok" if v is None else ("-" if v == "not run" else "FAIL")

    head = ("| model | in | params M | pp params M | TP params M | pp/TP | GFLOPs | pp GFLOPs | "
            "TP GFLOPs | pp s | TP s | pp run | TP run | exact@0 |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        ratio = "-" if r.get("ratio_vs_tp") is None else f"{r['ratio_vs_tp']:.3f}"
        tpt = "-" if r.get("tp_time") is None else f"{r['tp_time']:.1f}"
        lines.append(
            f"| {r['model']} | {r['input']} | {m(r['params'])} | {m(r['pp_params'])} | "
            f"{m(r['tp_params'])} | {ratio} | {g(r['flops'])} | {g(r['pp_flops'])} | "
            f"{g(r['tp_flops'])} | {r['pp_time']:.1f} | {tpt} | {ok(r['pp_run'])} | "
            f"{ok(r['tp_run'])} | {'yes' if r['exact0'] is True else 'NO'} |")
    return "\n".join(lines)


def summary(rows: List[Dict[str, Any]]) -> str:
    n = len(rows)
    run_ok = sum(r["pp_run"] is None for r in rows)
    exact = sum(r["exact0"] is True for r in rows)
    tp_ok = [r for r in rows if r.get("ratio_vs_tp") is not None]
    within = [r for r in tp_ok if r["ratio_vs_tp"] <= 1.1]
    worse = [r for r in tp_ok if r["ratio_vs_tp"] > 1.1]
    lines = [f"{n} models: pyprune runs forward+backward after pruning on {run_ok}, "
             f"zero-channel exact on {exact}; Torch-Pruning gives a working model on "
             f"{len(tp_ok)}; pyprune params within 1.1x of TP's on {len(within)}, worse on "
             f"{len(worse)}"]
    for r in worse:
        lines.append(f"  worse: {r['model']} ({r['ratio_vs_tp']:.3f}x): "
                     + "; ".join(f"{k} [{v} ch]" for k, v in list(r["reasons"].items())[:3]))
    for r in rows:
        if r["pp_run"] is not None:
            lines.append(f"  pyprune FAIL: {r['model']}: {r['pp_run']}")
        if r["tp_run"] not in (None, "not run"):
            lines.append(f"  TP fail: {r['model']}: {r['tp_run']}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated names (default: all)")
    ap.add_argument("--size", type=int, default=64, help="input size of the CNNs")
    ap.add_argument("--max-params", type=float, default=float("inf"),
                    help="skip models with more parameters than this")
    ap.add_argument("--no-tp", action="store_true", help="do not run Torch-Pruning")
    ap.add_argument("--json", default=None, help="write the rows here (rewritten per model)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tp-timeout", type=float, default=None,
                    help="run Torch-Pruning in a subprocess, killed after this many seconds")
    ap.add_argument("--skip", default="", help="comma-separated names not to run")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="only print the table and summary of rows from --json files of earlier runs "
                         "(a later file's row replaces an earlier one of the same model)")
    ap.add_argument("--_tp-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.merge:
        merged: Dict[str, Dict[str, Any]] = {}
        for path in args.merge:
            with open(path) as f:
                doc = json.load(f)
            print(f"{path}: {len(doc['rows'])} rows; {doc.get('machine', '')}")
            merged.update({r["model"]: r for r in doc["rows"]})
        rows = sorted(merged.values(), key=lambda r: r["params"] or 0)
        print(fmt_table(rows))
        print(summary(rows))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._tp_child:
        return _tp_child(args._tp_child[0], int(args._tp_child[1]))
    tv, how = load_torchvision()
    if tv is None:
        print(f"torchvision unavailable: {how}")
        return 1
    names = tv.models.list_models(module=tv.models)
    if args.models:
        want = args.models.split(",")
        names = [n for n in want if n in names] + [n for n in want if n not in names]
    import torch_pruning as tp
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
               f"torch {torch.__version__}, torchvision {tv.__version__} ({how} import), "
               f"torch-pruning {tp.__version__}, {torch.get_num_threads()} threads")
    print(machine, flush=True)
    rows: List[Dict[str, Any]] = []
    sizes = {}
    for name in names:  # smallest first (torchvision's weights metadata: nothing built)
        try:
            sizes[name] = int(tv.models.get_model_weights(name).DEFAULT.meta["num_params"])
        except Exception:  # noqa: BLE001
            sizes[name] = 0
    names.sort(key=lambda n: sizes[n])
    skip = set(args.skip.split(","))
    for name in names:
        if name in skip:
            continue
        if sizes[name] > args.max_params:
            print(f"{name}: skipped ({sizes[name] / 1e6:.0f} M params)", flush=True)
            continue
        try:
            r = bench_one(tv, name, args.size, not args.no_tp, args.tp_timeout)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            r = {"model": name, "input": 0, "params": None, "pp_params": None,
                 "tp_params": None, "ratio_vs_tp": None, "flops": None, "pp_flops": None,
                 "tp_flops": None, "pp_time": 0.0, "tp_time": None,
                 "pp_run": f"bench error {type(e).__name__}: {e}"[:160], "tp_run": "not run",
                 "exact0": False, "reasons": {}}
        rows.append(r)
        ratio = "-" if r["ratio_vs_tp"] is None else f"{r['ratio_vs_tp']:.3f}"
        print(f"{name}: pp {r['pp_params']} TP {r['tp_params']} ratio {ratio} "
              f"pp_run {r['pp_run']} tp_run {r['tp_run']} exact0 {r['exact0']} "
              f"pp {r['pp_time']:.1f}s reasons {r['reasons']}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": machine, "argv": sys.argv, "rows": rows}, f, indent=1)
    print(fmt_table(rows))
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
