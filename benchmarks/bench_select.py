"""Channel compaction: pyprune.ops.select_channels_ vs torch.index_select and copy_.

Workload: every tensor of a VGG-16 whose conv widths are scaled x4 (about 236M
parameters, 0.95 GB in float32) pruned to a random 50% of the channels of
every conv layer: each conv weight is compacted along dim 0 (its filters) and
dim 1 (the previous layer's kept channels), biases and BatchNorm
weight/bias/running stats along dim 0, and the classifier's first Linear
along its input columns.  Correctness first (all three results are compared),
then the median of --runs runs after a warm-up:

* pyprune: one select_channels_ call for the whole model, in place.
* index_select: the strongest out-of-place torch alternative per tensor (the
  faster of chained index_select and one advanced-indexing gather).
* copy: dst.copy_(src) between preallocated buffers holding exactly the kept
  bytes, tensor by tensor (the issue's yardstick; timed interleaved with
  pyprune, run by run), and as one flat buffer of the same total size (the
  floor for moving those bytes).

Peak memory above the model itself is measured for each method in a fresh
subprocess (VmHWM after /proc/self/clear_refs on the CPU, max_memory_allocated
on CUDA).

    python benchmarks/bench_select.py [--device cpu|cuda] [--width 4] [--json PATH]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median_time, print_table, sync, write_json  # noqa: E402

import pyprune  # noqa: E402
from pyprune.models import vgg16_bn  # noqa: E402

Sel = Dict[int, torch.Tensor]  # dim -> kept indices


def workload(width: float, device: str, seed: int = 0) -> Tuple[List[torch.Tensor], List[Sel]]:
    """Tensors of VGG-16 (conv widths x width) and the 50% selections on them."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        shapes_model = vgg16_bn(width=width)
    gen = torch.Generator().manual_seed(seed)
    tensors: List[torch.Tensor] = []
    sels: List[Sel] = []
    prev_keep = None
    convs = [m for m in shapes_model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in shapes_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    linears = [m for m in shapes_model.modules() if isinstance(m, torch.nn.Linear)]

    def new(shape):
        return torch.randn(*shape, generator=gen).to(device)

    for conv, bn in zip(convs, bns):
        c = conv.out_channels
        keep = torch.randperm(c, generator=gen)[: c // 2].sort().values
        w = {0: keep} if prev_keep is None else {0: keep, 1: prev_keep}
        tensors.append(new(conv.weight.shape))
        sels.append(w)
        if conv.bias is not None:
            tensors.append(new(conv.bias.shape))
            sels.append({0: keep})
        for _ in range(4):  # BN weight, bias, running_mean, running_var
            tensors.append(new(bn.weight.shape))
            sels.append({0: keep})
        prev_keep = keep
    fc = linears[0]
    block = fc.in_features // convs[-1].out_channels  # flattened C x H x W
    idx = (prev_keep[:, None] * block + torch.arange(block)).reshape(-1)
    tensors.append(new(fc.weight.shape))
    sels.append({1: idx})
    return tensors, sels


def pairs_of(tensors, sels):
    pairs, keeps = [], []
    for t, s in zip(tensors, sels):
        for d, k in s.items():
            pairs.append((t, d))
            keeps.append(k)
    return pairs, keeps


def run_pyprune(tensors, sels):
    pairs, keeps = pairs_of(tensors, sels)
    pyprune.ops.select_channels_(pairs, keeps)
    return tensors


def run_index_select(tensors, sels):
    out = []
    for t, s in zip(tensors, sels):
        for d, k in s.items():
            t = t.index_select(d, k.to(t.device))
        out.append(t)
    return out


def run_gather(tensors, sels):
    out = []
    for t, s in zip(tensors, sels):
        if len(s) == 2:
            k0, k1 = s[0].to(t.device), s[1].to(t.device)
            out.append(t[k0[:, None], k1])
        else:
            (d, k), = s.items()
            out.append(t.index_select(d, k.to(t.device)))
    return out


def kept_shapes(tensors, sels):
    shapes = []
    for t, s in zip(tensors, sels):
        shape = list(t.shape)
        for d, k in s.items():
            shape[d] = k.numel()
        shapes.append(shape)
    return shapes


def vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def memory_child(method: str, width: float, device: str) -> int:
    """Peak bytes above the model while `method` runs once (fresh process)."""
    tensors, sels = workload(width, device)
    if method == "copy":
        src = [torch.empty(s, device=device) for s in kept_shapes(tensors, sels)]
        dst = [torch.empty(s, device=device) for s in kept_shapes(tensors, sels)]
    gc.collect()
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = vm_kib("VmRSS") * 1024
    if method == "pyprune":
        keep = run_pyprune(tensors, sels)
    elif method == "index_select":
        keep = run_index_select(tensors, sels)
    elif method == "gather":
        keep = run_gather(tensors, sels)
    else:
        for d, s in zip(dst, src):
            d.copy_(s)
        keep = dst
    sync(device)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else vm_kib("VmHWM") * 1024
    del keep
    return peak - base


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=float, default=4.0)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", default=None)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_select: --device cuda asked for but torch.cuda.is_available() is False; skipping")
        return 0
    if args.memory_child:
        print(json.dumps({"peak_extra_bytes": memory_child(args.memory_child, args.width, device)}))
        return 0
    if args.runs < 5:
        p.error("--runs must be >= 5 (median of at least five runs)")

    masters, sels = workload(args.width, device)
    total_bytes = sum(t.numel() * t.element_size() for t in masters)
    shapes = kept_shapes(masters, sels)
    kept_bytes = sum(torch.Size(s).numel() * 4 for s in shapes)
    print(f"VGG-16 x{args.width:g}: {sum(t.numel() for t in masters) / 1e6:.1f}M values, "
          f"{total_bytes / 2**20:.0f} MiB; kept {kept_bytes / 2**20:.0f} MiB")

    # Correctness first.
    expect = run_index_select(masters, sels)
    gathered = run_gather(masters, sels)
    work = [t.clone() for t in masters]
    run_pyprune(work, sels)
    for a, b, c in zip(expect, gathered, work):
        if not (torch.equal(a, b) and torch.equal(a, c)):
            print("bench_select: results differ between methods")
            return 1
    del expect, gathered, work

    state = {}

    def fresh():
        state["work"] = None
        gc.collect()
        state["work"] = [t.clone() for t in masters]

    src = [torch.empty(s, device=device).normal_() for s in shapes]
    dst = [torch.empty(s, device=device) for s in shapes]

    def copy_all():
        for d, s in zip(dst, src):
            d.copy_(s)

    # pyprune and its yardstick interleaved, run by run, each after the same
    # setup (a fresh clone of the model: the in-place call needs one, and for
    # copy_ it leaves the caches and torch's threads in the same state), so
    # that both see the same drift of this shared machine's memory speed.
    times = {"pyprune": [], "copy": []}
    for i in range(1 + args.runs):
        for name, fn in (("pyprune", lambda: run_pyprune(state["work"], sels)), ("copy", copy_all)):
            fresh()
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if i > 0:
                times[name].append(time.perf_counter() - t0)
    t_ours, t_copy = statistics.median(times["pyprune"]), statistics.median(times["copy"])
    del src, dst
    state.clear()
    gc.collect()
    t_isel = median_time(lambda: run_index_select(masters, sels), device=device, runs=args.runs)
    t_gather = median_time(lambda: run_gather(masters, sels), device=device, runs=args.runs)
    flat_src = torch.empty(kept_bytes // 4, device=device).normal_()
    flat_dst = torch.empty_like(flat_src)
    t_flat = median_time(lambda: flat_dst.copy_(flat_src), device=device, runs=args.runs)
    del flat_src, flat_dst

    mem = {}
    if not args.no_memory:
        for method in ("pyprune", "index_select", "gather", "copy"):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", method,
                                  "--width", str(args.width), "--device", device],
                                 capture_output=True, text=True, check=True)
            mem[method] = json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_bytes"]

    best_alt = min(t_isel, t_gather)
    rows = [
        ["pyprune select_channels_ (in place)", f"{t_ours * 1e3:.1f}", f"{kept_bytes / t_ours / 1e9:.2f}",
         f"{t_ours / t_copy:.2f}", f"{mem.get('pyprune', float('nan')) / 2**20:.0f}"],
        ["torch index_select (chained)", f"{t_isel * 1e3:.1f}", f"{kept_bytes / t_isel / 1e9:.2f}",
         f"{t_isel / t_copy:.2f}", f"{mem.get('index_select', float('nan')) / 2**20:.0f}"],
        ["torch advanced-index gather", f"{t_gather * 1e3:.1f}", f"{kept_bytes / t_gather / 1e9:.2f}",
         f"{t_gather / t_copy:.2f}", f"{mem.get('gather', float('nan')) / 2**20:.0f}"],
        ["copy_ of the kept bytes, per tensor", f"{t_copy * 1e3:.1f}", f"{kept_bytes / t_copy / 1e9:.2f}", "1.00",
         f"{mem.get('copy', float('nan')) / 2**20:.0f}"],
        ["copy_ of the kept bytes, one buffer", f"{t_flat * 1e3:.1f}", f"{kept_bytes / t_flat / 1e9:.2f}",
         f"{t_flat / t_copy:.2f}", "-"],
    ]
    meta = machine(device)
    print(f"\nchannel compaction on {device} ({meta.get('gpu', meta['cpu'])}), median of {args.runs} runs")
    print_table(["method", "ms", "GB/s kept", "x copy", "peak extra MiB"], rows)
    print(f"\npyprune vs best torch alternative: {best_alt / t_ours:.2f}x faster; "
          f"vs per-tensor copy_: {t_ours / t_copy:.2f}x its time; vs one-buffer copy_: {t_ours / t_flat:.2f}x")
    rec = {"model": f"vgg16_bn(width={args.width:g})", "device": device, "tensors": len(masters),
           "total_bytes": total_bytes, "kept_bytes": kept_bytes, "pyprune_s": t_ours,
           "index_select_s": t_isel, "gather_s": t_gather, "copy_s": t_copy, "flat_copy_s": t_flat,
           "speedup_vs_index_select": best_alt / t_ours, "ratio_to_copy": t_ours / t_copy,
           "ratio_to_flat_copy": t_ours / t_flat,
           "peak_extra_bytes": mem}
    write_json(args.json, [rec], meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
