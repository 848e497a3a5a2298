"""Build and runtime information."""
from __future__ import annotations

from typing import Any, Dict

import torch

from . import _C
from ._version import __version__

__all__ = ["build_info"]


def build_info() -> Dict[str, Any]:
    """Describe this build of pyprune and what it can use at run time.

    Returns a dict with ``version``, ``cuda`` (True when the CUDA sources were
    compiled), ``cuda_archs`` (the CUDA targets, e.g. ``["80-real", "90-real",
    "90-virtual"]``), ``cuda_runtime_version`` (built against, 0 without CUDA),
    ``cuda_devices`` (devices the native CUDA runtime sees now), ``cpu_isa``
    (the CPU kernel variant, ``"avx2"`` or ``"generic"``), ``threads`` (the
    default size of the CPU pool, ``torch.get_num_threads()`` unless
    overridden with :func:`pyprune.ops.set_num_threads`), ``thread_backend``
    (where the CPU kernels run their blocks: the name of the OpenMP runtime
    torch loaded, e.g. ``"libgomp.so.1"``, whose threads torch's own kernels
    use, or ``"pyprune pool"`` without one, in a forked child, or with
    ``PYPRUNE_THREAD_BACKEND=pool`` in the environment) and
    ``hardware_threads``.
    """
    from .ops._common import get_num_threads

    info = dict(_C.build_info())
    info["version"] = __version__
    info["cuda_devices"] = int(_C.cuda_device_count()) if info["cuda"] else 0
    info["threads"] = get_num_threads()
    info["torch"] = torch.__version__
    return info
