"""Memory of a pruned model: storage bytes after pruning, peak extra memory during it,
and the time of the default (right-sized storages) against ``zero_copy=True``.

VGG-16 x4 (``pyprune.models.vgg16_bn(width=4)``, as in ``bench_prune.py``), L1 filter
pruning at 50%: ``build_graph`` + L1 scores + plan + ``apply_plan``, i.e. what
``pyprune.prune(model, x, "l1", 0.5)`` does, on a fresh copy of the dense model for each
run.  Two settings: the model alone (parameters and buffers), and the model with a
``.grad`` on every parameter and an SGD momentum buffer (``optimizer=``).

Correctness first, for each mode: the pruned model runs, and with the default the
storage bytes of every touched tensor equal its value bytes (``numel * element_size``);
the script exits with an error otherwise.

Peak extra memory, two ways, both the highest level above the one before the call, read by
a thread every 0.2 ms while the call runs (the native kernels release the GIL):

* heap: the bytes glibc's malloc has handed out (``mallinfo2()``: ``uordblks + hblkhd``,
  all arenas), which is where torch's CPU allocator and the native code get their memory:
  every tensor storage, the new right-sized ones included, and the native snapshot that
  ``zero_copy=True, backup=True`` keeps, byte-exact;
* RSS: the process's resident set size (``/proc/self/statm``): also page-granular first
  touches and whatever else the process maps.

On CUDA (``--device cuda``) the peak is ``torch.cuda.max_memory_allocated`` above the
allocation before the call.  Times are medians of ``--runs`` runs of each mode,
interleaved (default, zero_copy, zero_copy without backup, default, ...) after a warm-up
run of each.

    python benchmarks/bench_memory.py --runs 5 --json bench_out/memory.json
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import os
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, print_table, write_json  # noqa: E402

import pyprune.criteria as criteria  # noqa: E402
from pyprune.graph import build_graph  # noqa: E402
from pyprune.models import vgg16_bn  # noqa: E402
from pyprune.plan import make_plan  # noqa: E402
from pyprune.surgery import apply_plan  # noqa: E402

MODELS: Dict[str, Callable[[], nn.Module]] = {
    "vgg16_bn_x4": lambda: vgg16_bn(width=4),
    "vgg16_bn": lambda: vgg16_bn(),
}
MODES = {"default": {}, "zero_copy": {"zero_copy": True},
         "zero_copy,no_backup": {"zero_copy": True, "backup": False}}
_PAGE = os.sysconf("SC_PAGE_SIZE")


def touched(model: nn.Module, opt: Optional[torch.optim.Optimizer]) -> List[torch.Tensor]:
    """Parameters, buffers, grads and optimizer state tensors (each once)."""
    out: Dict[int, torch.Tensor] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        out[id(t)] = t
        if getattr(t, "grad", None) is not None:
            out[id(t.grad)] = t.grad
        if opt is not None:
            for v in opt.state.get(t, {}).values():
                if torch.is_tensor(v):
                    out[id(v)] = v
    return list(out.values())


def storage_bytes(ts: List[torch.Tensor]) -> int:
    seen: Dict[Tuple[int, int], int] = {}
    for t in ts:
        s = t.untyped_storage()
        seen[(s.data_ptr(), s.nbytes())] = s.nbytes()
    return sum(seen.values())


def value_bytes(ts: List[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def fresh(base: nn.Module, state: bool, device: str):
    model = copy.deepcopy(base).to(device)
    opt = None
    if state:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.25)
            opt.state[p]["momentum_buffer"] = torch.full_like(p, 0.5)
    gc.collect()
    return model, opt


def prune(model: nn.Module, opt, x: torch.Tensor, mode: Dict[str, Any],
          sampler: Optional["Sampler"] = None) -> Dict[str, float]:
    t0 = time.perf_counter()
    graph = build_graph(model, x)
    plan = make_plan(graph, criteria.compute("l1", model, x), ratio=0.5)
    if sampler is not None:
        sampler.mark()
    t1 = time.perf_counter()
    apply_plan(model, plan, optimizer=opt, **mode)
    t2 = time.perf_counter()
    return {"total": t2 - t0, "surgery": t2 - t1}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _heap_reader() -> Callable[[], int]:
    fn = ctypes.CDLL("libc.so.6").mallinfo2
    fn.restype = _MallInfo2

    def heap() -> int:
        m = fn()
        return m.uordblks + m.hblkhd
    return heap


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class Sampler:
    """Peaks of the heap and of the RSS above their levels at entry, sampled by a thread."""

    def __init__(self, interval: float = 2e-4) -> None:
        self.interval = interval
        self.heap = _heap_reader()
        self._stop = threading.Event()

    def _read(self) -> None:
        h = self.heap()
        self.peak_heap = max(self.peak_heap, h)
        self.peak_mark = max(self.peak_mark, h)
        self.peak_rss = max(self.peak_rss, rss())

    def mark(self) -> None:
        """Starts a second heap peak from here (the surgery phase)."""
        self.base_mark = self.peak_mark = self.heap()

    def __enter__(self) -> "Sampler":
        self.base_heap = self.peak_heap = self.base_mark = self.peak_mark = self.heap()
        self.base_rss = self.peak_rss = rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._read()
            time.sleep(self.interval)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._read()


def measure_memory(base: nn.Module, state: bool, x: torch.Tensor, mode: Dict[str, Any],
                   device: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    model, opt = fresh(base, state, device)
    ts = touched(model, opt)
    out["dense_bytes"] = value_bytes(ts)
    del ts
    if device == "cpu":
        with Sampler() as s:
            prune(model, opt, x, mode, s)
        out["peak_extra_heap"] = s.peak_heap - s.base_heap
        out["peak_extra_heap_surgery"] = s.peak_mark - s.base_mark
        out["peak_extra_rss"] = s.peak_rss - s.base_rss
    else:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        prune(model, opt, x, mode)
        torch.cuda.synchronize()
        out["peak_extra_heap"] = torch.cuda.max_memory_allocated() - before
    ts = touched(model, opt)
    out["storage_bytes"] = storage_bytes(ts)
    out["value_bytes"] = value_bytes(ts)
    out["model_bytes"] = value_bytes(list(model.parameters()) + list(model.buffers()))
    with torch.no_grad():
        y = model(x)
    if y.shape != (1, 10) or not bool(torch.isfinite(y).all()):
        raise SystemExit(f"broken pruned model: output {tuple(y.shape)}")
    if not mode.get("zero_copy"):
        bad = [tuple(t.shape) for t in ts if t.untyped_storage().nbytes() != t.numel() * t.element_size()]
        if bad or out["storage_bytes"] != out["value_bytes"]:
            raise SystemExit(f"default mode left tensors with oversized storage: {bad[:5]}")
    del model, opt, ts, y
    gc.collect()
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg16_bn_x4", choices=list(MODELS))
    ap.add_argument("--runs", type=int, default=5, help="timed runs per mode (median)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--settings", nargs="*", default=["model", "model+grad+momentum"],
                    choices=["model", "model+grad+momentum"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.runs < 3:
        ap.error("--runs must be >= 3 (median of at least three runs)")
    torch.manual_seed(0)
    base = MODELS[args.model]().eval()
    x = torch.randn(1, 3, 32, 32, device=args.device)
    rows, records = [], []
    for setting in args.settings:
        state = setting != "model"
        mem = {m: measure_memory(base, state, x, kw, args.device) for m, kw in MODES.items()}
        times: Dict[str, Dict[str, List[float]]] = {m: {"total": [], "surgery": []} for m in MODES}
        for i in range(args.runs + 1):  # the first round is the warm-up
            for m, kw in MODES.items():
                model, opt = fresh(base, state, args.device)
                time.sleep(0.3)
                t = prune(model, opt, x, kw)
                if i:
                    for k, v in t.items():
                        times[m][k].append(v)
                del model, opt
                gc.collect()
        for m in MODES:
            r = dict(mem[m], model=args.model, setting=setting, mode=m, runs=args.runs,
                     time_total=statistics.median(times[m]["total"]),
                     time_surgery=statistics.median(times[m]["surgery"]),
                     times_surgery=times[m]["surgery"])
            records.append(r)
            mib = 2.0 ** 20
            rows.append([setting, m, f"{r['dense_bytes'] / mib:.1f}", f"{r['value_bytes'] / mib:.1f}",
                         f"{r['storage_bytes'] / mib:.1f}", f"{r['peak_extra_heap'] / mib:.1f}",
                         f"{r['peak_extra_heap_surgery'] / mib:.1f}" if "peak_extra_rss" in r else "-",
                         f"{r['peak_extra_rss'] / mib:.1f}" if "peak_extra_rss" in r else "-",
                         f"{r['peak_extra_heap'] / r['value_bytes']:.2f}",  # against the pruned touched tensors
                         f"{r['time_surgery']:.3f}", f"{r['time_total']:.3f}"])
        df = next(r for r in records if r["setting"] == setting and r["mode"] == "default")
        for m in list(MODES)[1:]:
            zc = next(r for r in records if r["setting"] == setting and r["mode"] == m)
            rows.append([setting, f"default/{m}", "", "", "", "", "", "", "",
                         f"{df['time_surgery'] / zc['time_surgery']:.2f}x",
                         f"{df['time_total'] / zc['time_total']:.2f}x"])
    print(f"{args.model}, L1 50%, {args.device}; MiB; peak extra = highest level above the start "
          f"during build_graph + scores + plan + apply_plan; median of {args.runs} interleaved runs")
    print_table(["setting", "mode", "dense", "pruned values", "pruned storage", "peak extra (heap)",
                 "heap, surgery", "peak extra (RSS)", "peak/pruned", "surgery s", "prune s"], rows)
    write_json(args.json, records, machine(args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
