"""Shared helpers for the benchmark scripts: timing, machine description, output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], *, device: str = "cpu", runs: int = 5, warmup: int = 1,
                setup: Optional[Callable[[], None]] = None) -> float:
    """Median wall time of fn() over `runs` runs after `warmup` runs (setup() untimed before each)."""
    times: List[float] = []
    for i in range(warmup + runs):
        if setup is not None:
            setup()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    return statistics.median(times)


def median_times(fns: Dict[str, Callable[[], object]], *, device: str = "cpu", runs: int = 5,
                 warmup: int = 1, settle: float = 0.3, interleave: bool = True) -> Dict[str, float]:
    """Median wall time of each fn, the fns run interleaved (a, b, a, b, ...).

    On a shared machine the speed drifts over seconds; interleaving makes every
    candidate see the same drift, so their ratio is what the median compares.
    Before each timed call the process sleeps `settle` seconds: torch's OpenMP
    workers keep spinning for a while after a parallel region, and a call
    started right after one runs on cores they still occupy (measured here:
    a pyprune call right after torch.linalg.matrix_rank took 1.5x as long).

    interleave=False times each fn in its own block (warm-up, then its runs),
    the usual way on a GPU: there a short call that follows a long, mostly idle
    one (torch's cuSOLVER path waits on the host between solver calls) runs
    before the clocks are back up, so interleaving charges one library for
    the other's power state.
    """
    if not interleave:
        return {k: median_time(fn, device=device, runs=runs, warmup=warmup) for k, fn in fns.items()}
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for i in range(warmup + runs):
        for name, fn in fns.items():
            sync(device)
            if settle > 0 and device == "cpu":
                time.sleep(settle)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> Dict[str, object]:
    import pyprune

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": pyprune.ops.get_num_threads(),
        "torch": torch.__version__,
        "pyprune": pyprune.__version__,
        "cpu_isa": pyprune.build_info()["cpu_isa"],
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = props.name
        info["cuda"] = torch.version.cuda
        try:
            import subprocess

            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:  # noqa: BLE001 - the driver version is informative only
            info["driver"] = "unknown"
    return info


def print_table(headers: List[str], rows: List[List[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: Optional[str], records: List[Dict[str, object]], meta: Dict[str, object]) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:  # a list of records, each naming the machine it was measured on
        json.dump([dict(r, machine=meta) for r in records], f, indent=2)
    print(f"wrote {path}")
