"""CIFAR-10: HRank, Network Slimming, Taylor, L1 and random pruning at the same FLOPs budget.

Trains one dense ResNet-20 (short schedule by default; ``--epochs 160`` or more for the
papers' schedules on a GPU), then for every method prunes a copy to ``--flops`` (50% of
the FLOPs by default), fine-tunes it for the same ``--finetune-epochs`` with the same
schedule, and reports test accuracy, parameters, FLOPs and measured latency (CPU, batch
1 and 64, median of repeated runs; GPU too when present).  ``slim`` first trains
``--slim-epochs`` more epochs of the dense model with the sparsity penalty on the
BatchNorm scales (``pyprune.slimming``), as Network Slimming does, then prunes with one
global threshold; the other methods prune the dense model as it is.

Data: the JPEG re-encoding of CIFAR-10 in ``--data-dir`` (``cifar10_train_jpeg.npz``,
``cifar10_test_jpeg.npz``: ``jpeg`` bytes, ``offsets``, ``labels``); the script prints
one line and exits 0 when the files are absent.  The loader for that format lives here,
not in the package.

    python benchmarks/cifar10_compare.py [--epochs 8] [--finetune-epochs 2] [--json PATH] [--save-dir DIR]
    python benchmarks/cifar10_compare.py --epochs 1 --finetune-epochs 1 --train-subset 2000 \\
        --test-subset 500        # smoke test
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

import pyprune
from pyprune import criteria
from pyprune.engine import checkpoint as ckpt
from pyprune.engine.data import Dataset, InMemory, batches
from pyprune.engine.dist import DistInfo
from pyprune.engine.job import prune_to_budget
from pyprune.engine.latency import latency
from pyprune.engine.train import TrainConfig, evaluate, make_optimizer, make_scheduler, train_epoch
from pyprune.report import text_table

DEFAULT_DIR = "/work/shared/data/cifar10"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_npz(path: str, limit: Optional[int]) -> InMemory:
    """Decode the JPEG ``.npz`` (see the module docstring) into uint8 (n, 3, 32, 32)."""
    from PIL import Image
    z = np.load(path)
    jpeg, offsets, labels = z["jpeg"], z["offsets"], z["labels"]
    idx = np.arange(len(labels))
    if limit is not None and limit < len(labels):  # a seeded random subset (the files may be sorted by class)
        idx = np.sort(np.random.default_rng(0).permutation(len(labels))[:limit])
    imgs = np.empty((len(idx), 32, 32, 3), np.uint8)
    for j, i in enumerate(idx):
        with Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())) as im:
            imgs[j] = np.asarray(im.convert("RGB"))
    return InMemory(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(),
                    torch.from_numpy(labels[idx].astype(np.int64)))


def fit(model: torch.nn.Module, ds: Dataset, cfg: TrainConfig, dist: DistInfo, epochs: int, lr: float,
        phase: str, show: bool, slim_lambda: Optional[float] = None) -> List[Dict[str, float]]:
    opt = make_optimizer(model, cfg, lr)
    sched = make_scheduler(opt, cfg.schedule, epochs)
    reg = pyprune_slimming(model, slim_lambda, opt) if slim_lambda else None
    hist = []
    for e in range(epochs):
        t0 = time.perf_counter()
        tr = train_epoch(model, ds, opt, cfg, dist=dist, phase=phase, epoch=e, show=show,
                         desc=f"{phase} {e + 1}/{epochs}")
        sched.step()
        rec = {"epoch": e + 1, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
               "seconds": time.perf_counter() - t0}
        if e == epochs - 1 or show:
            te = evaluate(model, ds, cfg, dist=dist)
            rec.update(test_loss=te["loss"], test_accuracy=te["accuracy"])
        hist.append(rec)
        if show:
            print(f"  {phase} epoch {e + 1}/{epochs}: train {tr['accuracy']:.2f}% test "
                  f"{rec.get('test_accuracy', float('nan')):.2f}% ({rec['seconds']:.0f}s)", file=sys.stderr)
    if reg is not None:
        reg.remove()
    return hist


def pyprune_slimming(model: torch.nn.Module, lam: float, opt: torch.optim.Optimizer) -> Any:
    from pyprune.slimming import slimming
    return slimming(model, lam=lam, optimizer=opt)


def lat(model: torch.nn.Module, gpu: bool = True) -> Dict[str, float]:
    """Median ms at batch 1 and 64: ``cpu_b{b}_ms``, and ``cuda_b{b}_ms`` when a GPU is
    present and ``gpu``."""
    out = {}
    for b in (1, 64):
        out[f"cpu_b{b}_ms"] = latency(model, (b, 3, 32, 32), torch.device("cpu"), max_seconds=2.0)["median_ms"]
        if gpu and torch.cuda.is_available():
            out[f"cuda_b{b}_ms"] = latency(model, (b, 3, 32, 32), torch.device("cuda"))["median_ms"]
    return out


def relatency(args: argparse.Namespace) -> int:
    """Latency of the saved models, measured round by round (every model once per round,
    the order rotated), each figure the median over the rounds of the per-round medians."""
    import statistics

    names = ["dense"] + [m for m in args.methods.split(",") if m]
    factory = lambda: pyprune.models.get_model(args.model, num_classes=10)  # noqa: E731
    models = {n: pyprune.load(os.path.join(args.latency_from, f"{n}.pt"), factory).eval()
              for n in names if os.path.isfile(os.path.join(args.latency_from, f"{n}.pt"))}
    if args.threads:
        torch.set_num_threads(args.threads)
    keys = [f"cpu_b{b}_ms" for b in (1, 64)]
    got: Dict[str, Dict[str, List[float]]] = {n: {k: [] for k in keys} for n in models}
    order = list(models)
    for r in range(args.rounds):
        for n in order[r % len(order):] + order[:r % len(order)]:
            for k, v in lat(models[n], gpu=False).items():
                got[n][k].append(v)
    res = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in got.items()}
    rows = [[n, f"{res[n][keys[0]]:.2f}", f"{res[n][keys[1]]:.1f}",
             f"{res['dense'][keys[1]] / res[n][keys[1]]:.2f}x"] for n in models]
    print(text_table(["model", "CPU b1 ms", "CPU b64 ms", "speedup b64"], rows, right=(1, 2, 3)))
    print(f"{args.rounds} rounds; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")
    if args.json and os.path.isfile(args.json):
        with open(args.json) as f:
            doc = json.load(f)
        for row in doc["rows"]:
            if row["method"] in res:
                row.update({f"{k}_loaded_run": row.get(k) for k in keys})
                row.update(res[row["method"]])
        doc["relatency"] = {"rounds": args.rounds, "threads": torch.get_num_threads()}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=DEFAULT_DIR)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--methods", default="hrank,slim,taylor,l1,random")
    ap.add_argument("--flops", type=float, default=0.5)
    # Defaults: the schedule that fits in about an hour on a 2-core CPU (a ResNet-20
    # epoch over the 50,000 images takes about 250 s there).
    ap.add_argument("--epochs", type=int, default=8, help="dense training epochs")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--slim-epochs", type=int, default=1, help="sparsity-training epochs before slim")
    ap.add_argument("--slim-lambda", type=float, default=1e-5, help="paper: 1e-5 for ResNets")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--prune-batches", type=int, default=4, help="batches of 128 training images for "
                    "data-driven criteria (HRank uses 500 images)")
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="progress bars and per-epoch test accuracy")
    ap.add_argument("--json", default=None)
    ap.add_argument("--save-dir", default=None, help="write the dense and every pruned model there "
                    "(pyprune.save format), e.g. to re-measure latency on an idle machine")
    ap.add_argument("--latency-from", default=None, metavar="DIR",
                    help="only re-measure the latency of the models a --save-dir run wrote to DIR "
                    "(interleaved rounds, median), and update --json's rows when given")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of --latency-from")
    args = ap.parse_args()
    if args.latency_from:
        return relatency(args)

    files = [os.path.join(args.data_dir, f) for f in ("cifar10_train_jpeg.npz", "cifar10_test_jpeg.npz")]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        print(f"skipped: CIFAR-10 data not found ({', '.join(missing)})")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in criteria.CRITERIA]
    if unknown:
        print(f"unknown methods {unknown}; registered: {sorted(criteria.CRITERIA)}", file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    ds = Dataset("cifar10-jpeg", load_npz(files[0], args.train_subset), load_npz(files[1], args.test_subset),
                 CLASSES, 32, MEAN, STD)
    t_decode = time.perf_counter() - t0
    dev = torch.device(args.device)
    dist = DistInfo(device=dev)
    cfg = TrainConfig(lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                      seed=args.seed, schedule="cosine")
    torch.manual_seed(args.seed)
    dense = pyprune.models.get_model(args.model, num_classes=10).to(dev)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dev)
    print(f"{args.model}: {len(ds.train)} train / {len(ds.test)} test images (decoded in {t_decode:.1f}s), "
          f"{args.epochs} dense epochs, {args.finetune_epochs} fine-tuning epochs, device {dev}, "
          f"{torch.get_num_threads()} threads", file=sys.stderr)
    t0 = time.perf_counter()
    dense_hist = fit(dense, ds, cfg, dist, args.epochs, args.lr, "dense", args.verbose)
    t_dense = time.perf_counter() - t0
    dense_eval = evaluate(dense, ds, cfg, dist=dist)
    dense_cpu = ckpt.clone_model(dense).cpu().eval()
    dprof = pyprune.profile(dense_cpu, torch.zeros(1, 3, 32, 32))
    print(f"dense: {dense_eval['accuracy']:.2f}% in {t_dense:.0f}s", file=sys.stderr)
    if args.save_dir:
        os.makedirs(args.save_dir, exist_ok=True)
        pyprune.save(dense_cpu, os.path.join(args.save_dir, "dense.pt"))

    rows: List[Dict[str, Any]] = [{"method": "dense", "accuracy": dense_eval["accuracy"], "params": dprof.params,
                                   "flops": dprof.flops, **lat(dense_cpu)}]
    for method in methods:
        t0 = time.perf_counter()
        m = ckpt.clone_model(dense).to(dev)
        extra: Dict[str, Any] = {}
        if method == "slim" and args.slim_epochs > 0:
            extra["slim_hist"] = fit(m, ds, cfg, dist, args.slim_epochs, args.finetune_lr, "slim", args.verbose,
                                     slim_lambda=args.slim_lambda)
        m.eval()
        data = None
        if criteria.info(method).data != "none":
            data = list(batches(ds, "train", args.batch_size, device=dev, seed=args.seed, phase="criterion",
                                limit=args.prune_batches))
        opts = {"seed": args.seed} if method == "random" else {}
        budget = prune_to_budget(m, x, method, data, flops=args.flops, options=opts, image_size=32)
        data = None
        acc0 = evaluate(m, ds, cfg, dist=dist)["accuracy"]
        ft = fit(m, ds, cfg, dist, args.finetune_epochs, args.finetune_lr, f"finetune-{method}", args.verbose)
        final = evaluate(m, ds, cfg, dist=dist)
        mc = ckpt.clone_model(m).cpu().eval()
        prof = pyprune.profile(mc, torch.zeros(1, 3, 32, 32))
        row = {"method": method, "accuracy": final["accuracy"], "accuracy_before_finetune": acc0,
               "params": prof.params, "flops": prof.flops, **lat(mc), "seconds": time.perf_counter() - t0,
               "budget": {k: v for k, v in budget.items() if k != "summary"}, "finetune": ft, **extra}
        rows.append(row)
        if args.save_dir:
            pyprune.save(mc, os.path.join(args.save_dir, f"{method}.pt"))
        print(f"{method}: {acc0:.2f}% after pruning, {final['accuracy']:.2f}% after fine-tuning "
              f"({row['seconds']:.0f}s)", file=sys.stderr)

    d = rows[0]
    cols = ["method", "top-1 %", "before FT %", "params", "FLOPs", "CPU b1 ms", "CPU b64 ms", "speedup b64"]
    if torch.cuda.is_available():
        cols += ["GPU b1 ms", "GPU b64 ms"]
    table = []
    for r in rows:
        line = [r["method"], f"{r['accuracy']:.2f}", f"{r.get('accuracy_before_finetune', float('nan')):.2f}"
                if r["method"] != "dense" else "-", f"{r['params'] / 1e6:.3f}M ({r['params'] / d['params']:.0%})",
                f"{r['flops'] / 1e6:.1f}M ({r['flops'] / d['flops']:.0%})", f"{r['cpu_b1_ms']:.2f}",
                f"{r['cpu_b64_ms']:.1f}", f"{d['cpu_b64_ms'] / r['cpu_b64_ms']:.2f}x"]
        if torch.cuda.is_available():
            line += [f"{r['cuda_b1_ms']:.2f}", f"{r['cuda_b64_ms']:.2f}"]
        table.append(line)
    print(text_table(cols, table, right=tuple(range(1, len(cols)))))
    total = time.perf_counter() - t_all
    print(f"total {total / 60:.1f} min (decode {t_decode:.0f}s, dense training {t_dense:.0f}s); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "dense_history": dense_hist, "total_s": total,
                       "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                   "cpu_count": os.cpu_count(),
                                   "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}},
                      f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
