"""Batched matrix rank: ``matrix_rank(x, *, atol=None, rtol=None)``."""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from .. import _C
from ._common import resolve_threads

__all__ = ["matrix_rank"]

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_MAX_BATCH_DIMS = 16

ArrayLike = Union[torch.Tensor, np.ndarray]


def _check_tol(name: str, value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"matrix_rank: {name} must be a real number or None, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"matrix_rank: {name} must be finite and >= 0, got {value}")
    return value


def _tolerances(dtype: torch.dtype, m: int, n: int, atol: Optional[float], rtol: Optional[float]) -> Tuple[float, float]:
    """torch.linalg.matrix_rank's rule: tol = max(atol, rtol * sigma_max)."""
    default_rtol = torch.finfo(dtype).eps * max(m, n)
    if atol is None and rtol is None:
        return 0.0, default_rtol
    if rtol is None:  # atol given: rtol is 0 when atol > 0, else the default
        return atol, (0.0 if atol > 0 else default_rtol)
    return (0.0 if atol is None else atol), rtol


def _coalesce(sizes: List[int], strides: List[int]) -> Tuple[List[int], List[int]]:
    """Drop size-1 batch dims and merge adjacent ones that step like one dim."""
    out_s: List[int] = []
    out_t: List[int] = []
    for s, t in zip(sizes, strides):
        if s == 1:
            continue
        if out_s and out_t[-1] == t * s:
            out_s[-1] *= s
            out_t[-1] = t
        else:
            out_s.append(s)
            out_t.append(t)
    return out_s, out_t


def _native_cuda(device: torch.device) -> bool:
    """True when ``device`` is a CUDA device the native CUDA kernels can serve."""
    return device.type == "cuda" and hasattr(_C, "rank_cuda") and _cuda_runtime_ok()


@functools.lru_cache(maxsize=None)
def _cuda_runtime_ok() -> bool:
    # The native module links its own CUDA runtime; it may see no device (e.g. a
    # driver older than that runtime) even where torch does.
    return int(_C.cuda_device_count()) > 0


def _rank_cuda(t: torch.Tensor, code: int, sizes: List[int], strides: List[int], m: int, n: int,
               a: float, r: float, out: torch.Tensor, flag: Optional[torch.Tensor]) -> None:
    """Launch the native kernel on ``t``'s device and current stream (no host sync).

    ``flag`` (one int32 on the device, or None) is zeroed and set to 1 when a
    matrix holds NaN/Inf.
    """
    dev = t.device.index if t.device.index is not None else torch.cuda.current_device()
    # The native module selects `dev` itself; torch only allocates (on t.device) and names the stream.
    ws_bytes = int(_C.rank_cuda_workspace_bytes(m, n, code, out.numel(), dev))
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=t.device) if ws_bytes > 0 else None
    stream = torch.cuda.current_stream(t.device).cuda_stream
    _C.rank_cuda(t.data_ptr(), code, sizes, strides, m, n, t.stride(-2), t.stride(-1), a, r,
                 out.data_ptr(), dev, stream, ws.data_ptr() if ws is not None else 0, ws_bytes,
                 flag.data_ptr() if flag is not None else 0)


def matrix_rank(x: ArrayLike, *, atol: Optional[float] = None, rtol: Optional[float] = None,
                threads: Optional[int] = None, check_finite: bool = True) -> ArrayLike:
    """Rank of every matrix in the last two dimensions of ``x``.

    Args:
        x: tensor or numpy array of shape ``(..., M, N)`` (typically feature maps
            ``(N, C, H, W)``), dtype float16, bfloat16, float32 or float64, any
            strides (channels_last included).
        atol, rtol: tolerances, with the rule of :func:`torch.linalg.matrix_rank`:
            ``tol = max(atol, rtol * sigma_max)``; when both are None,
            ``rtol = eps(x.dtype) * max(M, N)``; when only ``atol > 0`` is given,
            ``rtol = 0``.  A singular value counts when it is ``> tol``.
        threads: CPU threads (default :func:`pyprune.ops.get_num_threads`).
        check_finite: raise ``ValueError`` when a matrix holds NaN or Inf (the
            default).  With ``False`` such matrices get rank ``-1`` instead and
            no error is raised: on CUDA the default check reads back one
            4-byte flag that the kernel sets, which synchronises the
            stream; pass ``False`` to keep a loop of calls asynchronous and test
            ``(ranks < 0).any()`` once at the end.

    Returns:
        int64 ranks of shape ``x.shape[:-2]`` on ``x``'s device (numpy in, numpy out).

    CUDA tensors run the native CUDA kernels (same algorithms, same results as
    on the CPU) on the current stream, with any workspace allocated through
    torch; without them (CPU-only build) the ranks are computed on a host copy.

    Contract: the result equals ``#{sigma > tol}`` for a float64 SVD of the same
    values wherever every singular value lies at least 1% (relative) away from
    tol.  float32/16 inputs use a float64 Gram matrix, tridiagonalisation and
    Sturm counts; float64 inputs use Golub-Kahan bidiagonalisation (see
    ``csrc/rank/rank.h``).

    Raises:
        TypeError: ``x`` is not a tensor/array, or has an unsupported dtype.
        ValueError: fewer than 2 dims, bad tolerances, or NaN/Inf in a matrix
            (the message names the index of the first such matrix).
    """
    op = "matrix_rank"
    is_numpy = isinstance(x, np.ndarray)
    if is_numpy:
        if x.dtype.kind != "f" or x.dtype.itemsize not in (2, 4, 8):
            raise TypeError(f"{op}: x must have dtype float16, float32 or float64, got numpy {x.dtype}")
        if any(s < 0 for s in x.strides) or not x.dtype.isnative:
            x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
        t = torch.from_numpy(x)
    elif isinstance(x, torch.Tensor):
        t = x
    else:
        raise TypeError(f"{op}: x must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if t.dtype not in _DTYPE_CODES:
        raise TypeError(f"{op}: x must have dtype float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.dim() < 2:
        raise ValueError(f"{op}: x must have at least 2 dims (..., M, N), got shape {tuple(t.shape)}")
    atol = _check_tol("atol", atol)
    rtol = _check_tol("rtol", rtol)
    nthreads = resolve_threads(op, threads)

    batch_shape = tuple(t.shape[:-2])
    m, n = int(t.shape[-2]), int(t.shape[-1])
    if t.device.type != "cpu" and not _native_cuda(t.device):
        # No native kernel for this device: compute on a host copy, answer on x's device.
        return matrix_rank(t.cpu(), atol=atol, rtol=rtol, threads=nthreads,
                           check_finite=check_finite).to(t.device)
    out = torch.empty(batch_shape, dtype=torch.int64, device=t.device)
    if out.numel() == 0 or m == 0 or n == 0:
        out.zero_()
        return out.numpy() if is_numpy else out

    a, r = _tolerances(t.dtype, m, n, atol, rtol)
    sizes, strides = _coalesce(list(batch_shape), list(t.stride()[:-2]))
    if len(sizes) > _MAX_BATCH_DIMS:
        t = t.reshape(-1, m, n)
        sizes, strides = _coalesce([t.shape[0]], [t.stride(0)])
    code = _DTYPE_CODES[t.dtype]
    if t.device.type == "cuda":
        flag = torch.empty(1, dtype=torch.int32, device=t.device) if check_finite else None
        _rank_cuda(t, code, sizes, strides, m, n, a, r, out, flag)
        non_finite = flag is not None and bool(flag)  # one 4-byte device -> host read (synchronises)
    else:
        ws = torch.empty(_C.rank_cpu_workspace_bytes(m, n, code, nthreads), dtype=torch.uint8)
        _C.rank_cpu(t.data_ptr(), code, sizes, strides, m, n, t.stride(-2), t.stride(-1), a, r,
                    out.data_ptr(), nthreads, ws.data_ptr())
        non_finite = check_finite and int(out.min()) < 0
    if non_finite:
        first = int((out < 0).reshape(-1).nonzero()[0, 0])
        index = tuple(int(i) for i in np.unravel_index(first, batch_shape)) if batch_shape else ()
        raise ValueError(f"{op}: x holds NaN or Inf in matrix {index} (the first such matrix)")
    return out.numpy() if is_numpy else out
