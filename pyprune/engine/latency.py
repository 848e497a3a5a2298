"""Measured inference latency: median wall time of repeated forward passes."""
from __future__ import annotations

import copy
import statistics
import time
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

__all__ = ["latency", "latencies", "devices_for_latency"]


def devices_for_latency() -> List[torch.device]:
    """The CPU, and the current GPU when one is present."""
    devs = [torch.device("cpu")]
    if torch.cuda.is_available():
        devs.append(torch.device("cuda", torch.cuda.current_device()))
    return devs


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@torch.inference_mode()
def latency(model: nn.Module, shape: Sequence[int], device: torch.device, *, warmup: int = 3,
            runs: int = 15, max_seconds: float = 3.0) -> Dict[str, float]:
    """Median (and min, max) milliseconds of ``model(x)`` for ``x`` of ``shape`` on ``device``.

    The model is copied to ``device`` in eval mode (the caller's model is left as is);
    at least 3 timed runs, at most ``runs``, fewer when ``max_seconds`` is spent.
    """
    net = copy.deepcopy(model).to(device).eval()
    x = torch.randn(*shape, device=device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(warmup):
        net(x)
    _sync(device)
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < runs and (len(times) < 3 or time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        net(x)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "runs": len(times)}


def latencies(dense: nn.Module, pruned: nn.Module, image_shape: Sequence[int],
              batch_sizes: Sequence[int] = (1, 64), **kw: float) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{device: {str(batch): {"dense": ms, "pruned": ms, "speedup": x}}}``, the two
    models timed alternately (dense, pruned) so drifts of a shared machine hit both."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for dev in devices_for_latency():
        per: Dict[str, Dict[str, float]] = {}
        for b in batch_sizes:
            shape = (b, *image_shape)
            d1 = latency(dense, shape, dev, **kw)
            p1 = latency(pruned, shape, dev, **kw)
            d2 = latency(dense, shape, dev, **kw)
            p2 = latency(pruned, shape, dev, **kw)
            d = min(d1["median_ms"], d2["median_ms"])
            p = min(p1["median_ms"], p2["median_ms"])
            per[str(b)] = {"dense_ms": d, "pruned_ms": p, "speedup": d / p if p > 0 else float("nan")}
        out[dev.type] = per
    return out
