"""Helpers shared by the ops: thread-count policy and small validators."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["get_num_threads", "set_num_threads", "resolve_threads"]

_num_threads: Optional[int] = None


def set_num_threads(n: Optional[int]) -> None:
    """Size the native CPU thread pool (``None`` follows ``torch.get_num_threads()``)."""
    global _num_threads
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"set_num_threads: n must be an int or None, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _num_threads = n


def get_num_threads() -> int:
    """Threads the native CPU kernels use: the override, else ``torch.get_num_threads()``."""
    return _num_threads if _num_threads is not None else max(1, torch.get_num_threads())


def resolve_threads(op: str, threads: Optional[int]) -> int:
    if threads is None:
        return get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"{op}: threads must be an int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"{op}: threads must be >= 1, got {threads}")
    return threads
