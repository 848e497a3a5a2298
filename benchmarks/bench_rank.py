"""Batched matrix rank: pyprune.ops.matrix_rank vs torch.linalg.matrix_rank.

Correctness first (the two must agree on every map), then timing: the same
tensor in the same process, median of --runs runs after a warm-up; on the CPU
the two libraries' runs are interleaved so both see the same machine load, on
CUDA each library is timed in its own block (see --timing).  Feature
maps are N(0, 1) samples (full rank: no zero rows or columns to skip, and on
the CPU settled by the full-rank test, without the tridiagonal reduction);
--relu uses ReLU'd maps as a network would produce, --rank R maps of rank R
(the CPU kernel's slowest case: the full-rank test fails and every map takes
the full path).

    python benchmarks/bench_rank.py [--device cpu|cuda] [--dtype float32 ...]
                                    [--shapes cifar|imagenet|all] [--json PATH]

--json writes a list of records, one per shape/dtype, with keys shape, dtype,
device, pyprune_s, torch_s, speedup, maps_per_s, torch_maps_per_s, gflops (the
float64 GFLOP/s of the algorithm's work, see algorithm_flops),
machine, and on CUDA pyprune_cpu_s and torch_maps_timed.

On CUDA, torch.linalg.matrix_rank batches only matrices up to 32x32 (cuSOLVER's
batched Jacobi SVD); above that it runs one solver call per matrix, so its time
is linear in the number of maps.  For those shapes torch is timed on the first
--torch-max-maps maps of the tensor (default 1024) and its time scaled to the
whole tensor; torch_maps_timed records how many maps it ran.  The agreement
check then covers the same leading maps.  pyprune always runs the whole tensor.
"""
from __future__ import annotations

import argparse
import sys
import os

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median_time, median_times, print_table, write_json  # noqa: E402

import pyprune  # noqa: E402

CIFAR = [(64, 64, 32, 32), (64, 128, 16, 16), (64, 256, 8, 8), (16, 64, 56, 56), (8, 64, 112, 112)]
IMAGENET = [(64, 256, 56, 56), (64, 64, 112, 112), (32, 512, 14, 14), (32, 2048, 7, 7)]


def algorithm_flops(m: int, n: int, dtype: torch.dtype, full_rank_test: bool) -> float:
    """Float64 flops of pyprune's algorithm for one full-rank m x n matrix (n <= m
    after transposing).  With full_rank_test (the CPU kernel, float32/16 input)
    a full-rank matrix costs the Gram matrix plus the shifted LDL^T test; else
    the Gram matrix, the tridiagonal reduction and the Sturm counts."""
    m, n = max(m, n), min(m, n)
    sturm = (9 * 3 + 1) * n * 4  # quadrisection counts + final count, ~4 flops per step
    if dtype == torch.float64:
        return 4.0 * m * n * n - 4.0 / 3.0 * n ** 3 + 2 * sturm
    if full_rank_test:
        return float(n * (n + 1) * m) + n ** 3 / 3.0 + 2.0 * n * n
    return float(n * (n + 1) * m) + 4.0 / 3.0 * n ** 3 + sturm


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float16", "bfloat16", "float64"])
    p.add_argument("--shapes", default="cifar", choices=["cifar", "imagenet", "all"])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--relu", action="store_true", help="ReLU'd maps instead of N(0,1) maps")
    p.add_argument("--rank", type=int, default=None, metavar="R",
                   help="maps of rank R (products of N(0,1) H x R and R x W factors) instead of full-rank ones")
    p.add_argument("--no-cpu", action="store_true", help="on CUDA, skip the pyprune-on-CPU column")
    p.add_argument("--torch-max-maps", type=int, default=1024,
                   help="on CUDA, above 32x32: time torch on this many leading maps and scale (see above)")
    p.add_argument("--timing", choices=["interleaved", "blocked"], default=None,
                   help="interleaved (a, b, a, b; the CPU default) or blocked (each library's warm-up and runs "
                        "together; the CUDA default), see benchmarks/_common.py median_times")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.runs < 5:
        p.error("--runs must be >= 5 (median of at least five runs)")
    device = args.device
    timing = args.timing or ("blocked" if device.startswith("cuda") else "interleaved")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_rank: --device cuda asked for but torch.cuda.is_available() is False; skipping")
        return 0
    shapes = {"cifar": CIFAR, "imagenet": IMAGENET, "all": CIFAR + IMAGENET}[args.shapes]
    meta = machine(device)
    print("machine:", meta)
    records, rows = [], []
    gen = torch.Generator().manual_seed(0)
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        for shape in shapes:
            if args.rank is not None:
                lead, (h, w) = shape[:-2], shape[-2:]
                x = torch.randn(*lead, h, args.rank, generator=gen) @ torch.randn(*lead, args.rank, w, generator=gen)
            else:
                x = torch.randn(*shape, generator=gen)
            if args.relu:
                x = torch.relu(x)
            x = x.to(device=device, dtype=dtype)
            # torch.linalg.matrix_rank has no half-precision kernels: it gets the same values in float32
            # with the tolerance of the input dtype.
            xt = x if dtype in (torch.float32, torch.float64) else x.float()
            rtol = torch.finfo(dtype).eps * max(shape[-2:])
            maps = x.numel() // (shape[-1] * shape[-2])
            torch_maps = maps
            if device.startswith("cuda") and max(shape[-2:]) > 32 and maps > args.torch_max_maps:
                torch_maps = args.torch_max_maps  # torch loops one solver call per matrix here
                xt = xt.reshape(-1, *shape[-2:])[:torch_maps]
            ours = pyprune.ops.matrix_rank(x)
            ref = torch.linalg.matrix_rank(xt, rtol=rtol)
            agree = float((ours.reshape(-1)[:torch_maps] == ref.reshape(-1)).double().mean())
            if agree < 1.0:
                print(f"bench_rank: results differ from torch on {100 * (1 - agree):.3f}% of maps for {shape} {dtype_name}")
                return 1
            t = median_times({"ours": lambda: pyprune.ops.matrix_rank(x),
                              "torch": lambda: torch.linalg.matrix_rank(xt, rtol=rtol)},
                             device=device, runs=args.runs, interleave=timing == "interleaved",
                             warmup=1 if timing == "interleaved" else 3)
            t_ours, t_torch = t["ours"], t["torch"] * (maps / torch_maps)
            settled = device == "cpu" and args.rank is None  # rank-R maps take the full path
            flops = maps * algorithm_flops(shape[-2], shape[-1], dtype, full_rank_test=settled)
            rec = {"shape": list(shape), "dtype": dtype_name, "device": device, "pyprune_s": t_ours,
                   "torch_s": t_torch, "speedup": t_torch / t_ours, "maps_per_s": maps / t_ours,
                   "torch_maps_per_s": maps / t_torch, "gflops": flops / t_ours / 1e9,
                   "torch_maps_timed": torch_maps, "timing": timing}
            row = [str(tuple(shape)), dtype_name, f"{t_ours * 1e3:.2f}", f"{t_torch * 1e3:.2f}",
                   f"{rec['speedup']:.1f}x", f"{rec['maps_per_s']:,.0f}", f"{rec['torch_maps_per_s']:,.0f}",
                   f"{rec['gflops']:.1f}"]
            if device.startswith("cuda") and not args.no_cpu:
                xc = x.cpu()
                t_cpu = median_time(lambda: pyprune.ops.matrix_rank(xc), runs=args.runs)
                rec["pyprune_cpu_s"] = t_cpu
                row.append(f"{t_cpu / t_ours:.1f}x")
            records.append(rec)
            rows.append(row)
            print("  ".join(row), flush=True)
    headers = ["shape", "dtype", "pyprune ms", "torch ms", "speedup", "pyprune maps/s", "torch maps/s",
               "GFLOP/s(f64)"]
    if device.startswith("cuda") and not args.no_cpu:
        headers.append("vs pyprune CPU")
    print()
    print(f"matrix_rank on {device} ({meta.get('gpu', meta['cpu'])}), median of {args.runs} runs, {timing} timing")
    print_table(headers, rows)
    write_json(args.json, records, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
