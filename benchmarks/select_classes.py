"""Channel compaction by tensor class: where select_channels_' time goes against copy_.

The bench_select workload (VGG-16 with widths x4, 50% of every conv's filters kept)
split into classes: large conv weights (> 10M values, pruned on dims 0 and 1),
mid-size conv weights, the 1-D BatchNorm/bias vectors, and the rest (first conv,
Linear).  Each class is compacted in place in one call (on a fresh clone, not
timed) and compared with copy_ of its kept bytes between preallocated buffers,
interleaved, median of --runs.

    python benchmarks/select_classes.py --runs 7
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_select as B  # noqa: E402
from _common import machine  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--width", type=float, default=4)
    args = ap.parse_args(argv)
    tensors, sels = B.workload(args.width, "cpu")
    shapes = B.kept_shapes(tensors, sels)
    classes = {"large conv weights": [], "mid conv weights": [], "1-D vectors": [], "other": []}
    for i, (t, s) in enumerate(zip(tensors, sels)):
        if t.dim() == 4 and len(s) == 2:
            key = "large conv weights" if t.numel() > 10_000_000 else "mid conv weights"
        else:
            key = "1-D vectors" if t.dim() == 1 else "other"
        classes[key].append(i)
    print(f"{'class':<20} {'n':>3} {'kept MiB':>9} {'select ms':>10} {'copy_ ms':>9} {'ratio':>6}")
    for name, idx in classes.items():
        ts, ss = [tensors[i] for i in idx], [sels[i] for i in idx]
        dst = [torch.empty(shapes[i]) for i in idx]
        src = [torch.empty(shapes[i]).normal_() for i in idx]
        kept = sum(d.numel() * d.element_size() for d in dst)
        a, b = [], []
        for _ in range(args.runs):
            work = [t.clone() for t in ts]
            t0 = time.perf_counter()
            B.run_pyprune(work, ss)
            a.append(time.perf_counter() - t0)
            del work
            t0 = time.perf_counter()
            for d, s_ in zip(dst, src):
                d.copy_(s_)
            b.append(time.perf_counter() - t0)
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{name:<20} {len(idx):>3} {kept / 2**20:>9.1f} {ma * 1e3:>10.2f} {mb * 1e3:>9.2f} "
              f"{ma / mb:>6.2f}")
    m = machine("cpu")
    print(f"median of {args.runs}; {m.get('cpu')}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
