"""Where the time of a CUDA call goes: host (Python + launch) against device.

For pyprune.ops.matrix_rank on the CIFAR shapes of bench_rank.py and for
select_channels_ on bench_select.py's VGG-16 workload, prints per call:

* call: wall time of the default call, synchronised (what a user waits for);
* async: wall time with check_finite=False, synchronised;
* host: wall time to issue the call without waiting (Python, validation,
  launch), averaged over a burst of back-to-back calls;
* device: CUDA-event time of a burst of back-to-back calls divided by the
  burst length (kernel time when the host keeps ahead of the device).

    python benchmarks/cuda_breakdown.py [--dtype float32] [--burst 50] [--json PATH]

Run it twice, once with PYPRUNE_CUDA_RANK_WARP=0, to compare the rank kernels.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median_time, print_table, write_json  # noqa: E402
from bench_rank import CIFAR, IMAGENET  # noqa: E402

import pyprune  # noqa: E402


def burst(fn, n):
    """(host seconds per call, device seconds per call) for n back-to-back calls."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t0) / n
    end.record()
    end.synchronize()
    return host, start.elapsed_time(end) / 1e3 / n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--burst", type=int, default=50)
    p.add_argument("--no-select", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_breakdown: no CUDA device; skipping")
        return 0
    dtype = getattr(torch, args.dtype)
    rows, records = [], []
    warp = os.environ.get("PYPRUNE_CUDA_RANK_WARP", "1")
    for shape in CIFAR + IMAGENET:
        x = torch.randn(*shape, device="cuda").to(dtype)
        mr = pyprune.ops.matrix_rank
        call = median_time(lambda: mr(x), device="cuda", runs=21, warmup=3)
        asyn = median_time(lambda: mr(x, check_finite=False), device="cuda", runs=21, warmup=3)
        host, dev = burst(lambda: mr(x, check_finite=False), args.burst)
        rec = {"op": "matrix_rank", "shape": list(shape), "dtype": args.dtype, "warp_path": warp,
               "call_s": call, "async_s": asyn, "host_s": host, "device_s": dev}
        records.append(rec)
        rows.append([f"rank {tuple(shape)}", f"{call * 1e6:.0f}", f"{asyn * 1e6:.0f}", f"{host * 1e6:.0f}",
                     f"{dev * 1e6:.0f}"])
        print("  ".join(rows[-1]), flush=True)
    if not args.no_select:
        from bench_select import pairs_of, workload

        masters, sels = workload(4, "cuda")
        works = []
        for _ in range(4):
            works.append([t.clone() for t in masters])
        torch.cuda.synchronize()
        hosts, devs, calls = [], [], []
        for w in works:
            pairs, keeps = pairs_of(w, sels)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            start.record()
            pyprune.ops.select_channels_(pairs, keeps)
            end.record()
            hosts.append(time.perf_counter() - t0)
            torch.cuda.synchronize()
            calls.append(time.perf_counter() - t0)
            devs.append(start.elapsed_time(end) / 1e3)
        host, dev, call = (statistics.median(v[1:]) for v in (hosts, devs, calls))
        # Kernel durations as the profiler (CUPTI) sees them, for one more call.
        w = [t.clone() for t in masters]
        pairs, keeps = pairs_of(w, sels)
        torch.cuda.synchronize()
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            pyprune.ops.select_channels_(pairs, keeps)
            torch.cuda.synchronize()
        print(prof.key_averages().table(row_limit=12))
        records.append({"op": "select_channels_", "model": "vgg16_bn(width=4)", "call_s": call, "host_s": host,
                        "device_s": dev})
        rows.append(["select VGG-16x4", f"{call * 1e6:.0f}", "-", f"{host * 1e6:.0f}", f"{dev * 1e6:.0f}"])
    meta = machine("cuda")
    print(f"\nCUDA call breakdown (us per call), {meta['gpu']}, PYPRUNE_CUDA_RANK_WARP={warp}")
    print_table(["what", "call", "async", "host", "device(events)"], rows)
    write_json(args.json, records, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
