"""Channel compaction: ``select_channels_(pairs, keep)`` and ``select_channels``."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .. import _C
from ._common import resolve_threads

__all__ = ["select_channels_", "select_channels"]

Pair = Union[Tuple[torch.Tensor, int], Tuple[torch.Tensor, int, int]]
Keep = Union[torch.Tensor, Sequence[int], Sequence[torch.Tensor]]


@dataclass
class _Sel:
    keep: torch.Tensor  # int64, CPU, sorted unique
    block: int


@dataclass
class _Plan:
    tensor: torch.Tensor
    sels: Dict[int, _Sel] = field(default_factory=dict)  # dim -> selection
    pair_ids: List[int] = field(default_factory=list)
    order: Optional[List[int]] = None  # memory order when the tensor is dense


def _as_index(op: str, what: str, k) -> torch.Tensor:
    if isinstance(k, torch.Tensor):
        if k.dtype.is_floating_point or k.dtype.is_complex or k.dtype == torch.bool:
            raise TypeError(f"{op}: {what} must hold integers, got dtype {k.dtype}")
        if k.dim() != 1:
            raise ValueError(f"{op}: {what} must be 1-D, got shape {tuple(k.shape)}")
        return k.detach().to(device="cpu", dtype=torch.int64).contiguous()
    if isinstance(k, (list, tuple)):
        for v in k:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{op}: {what} must hold integers, got {type(v).__name__} {v!r}")
        return torch.tensor(list(k), dtype=torch.int64)
    raise TypeError(f"{op}: {what} must be a 1-D integer tensor or a sequence of ints, got {type(k).__name__}")


def _check_keep(op: str, what: str, keep: torch.Tensor, size: int) -> None:
    if keep.numel() == 0:
        return
    if keep.numel() > 1:
        d = keep[1:] - keep[:-1]
        if bool((d <= 0).any()):
            i = int((d <= 0).nonzero()[0, 0])
            kind = "duplicate" if int(d[i]) == 0 else "unsorted"
            raise ValueError(f"{op}: {what} must be sorted and unique, got {kind} entries "
                             f"{int(keep[i])}, {int(keep[i + 1])} at positions {i}, {i + 1}")
    lo, hi = int(keep[0]), int(keep[-1])
    if lo < 0 or hi >= size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{op}: {what} index {bad} is out of range for {size} channels")


def _dense_layout(t: torch.Tensor) -> Optional[List[int]]:
    """Memory order of t if it is non-overlapping and dense, else None."""
    shape, stride = t.shape, t.stride()
    order = sorted(range(len(shape)), key=lambda d: (-stride[d], d))
    expected = 1
    for d in reversed(order):
        if shape[d] != 1 and stride[d] != expected:
            return None
        expected *= shape[d]
    return order


def _dense_strides(sizes: Sequence[int], order: Sequence[int]) -> List[int]:
    strides = [0] * len(sizes)
    s = 1
    for d in reversed(order):
        strides[d] = s
        s *= max(1, sizes[d])
    return strides


def _validate(op: str, pairs, keep, in_place: bool) -> List[_Plan]:
    if not isinstance(pairs, (list, tuple)) or (pairs and isinstance(pairs[0], torch.Tensor)):
        got = "a single (tensor, dim) pair" if isinstance(pairs, (list, tuple)) else type(pairs).__name__
        raise TypeError(f"{op}: pairs must be a list of (tensor, dim) or (tensor, dim, block), got {got}")
    per_pair = isinstance(keep, (list, tuple)) and len(keep) > 0 and all(
        isinstance(k, (torch.Tensor, list, tuple)) for k in keep)
    if per_pair:
        if len(keep) != len(pairs):
            raise ValueError(f"{op}: keep has {len(keep)} index lists for {len(pairs)} pairs")
        # A plan passes one index tensor for all pairs of a group: convert each once.
        converted: Dict[int, torch.Tensor] = {}
        keeps = []
        for i, k in enumerate(keep):
            if id(k) not in converted:
                converted[id(k)] = _as_index(op, f"keep[{i}]", k)
            keeps.append(converted[id(k)])
    else:
        shared = _as_index(op, "keep", keep)
        keeps = [shared] * len(pairs)

    plans: Dict[int, _Plan] = {}
    checked = set()
    device = None
    channels = None
    for i, p in enumerate(pairs):
        if not isinstance(p, (tuple, list)) or len(p) not in (2, 3):
            what = f"a {len(p)}-tuple" if isinstance(p, (tuple, list)) else type(p).__name__
            raise TypeError(f"{op}: pairs[{i}] must be (tensor, dim) or (tensor, dim, block), got {what}")
        t, dim = p[0], p[1]
        block = p[2] if len(p) == 3 else 1
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: pairs[{i}][0] must be a torch.Tensor, got {type(t).__name__}")
        for name, v in (("dim", dim), ("block", block)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{op}: pairs[{i}] {name} must be an int, got {type(v).__name__} {v!r}")
        if t.dim() == 0:
            raise ValueError(f"{op}: pairs[{i}] tensor is 0-dim; it has no channel dimension")
        if not -t.dim() <= dim < t.dim():
            raise ValueError(f"{op}: pairs[{i}] dim {dim} is out of range for a tensor of shape {tuple(t.shape)}")
        dim %= t.dim()
        size = t.size(dim)
        if block < 1 or size % block != 0:
            raise ValueError(f"{op}: pairs[{i}] block {block} must be >= 1 and divide size {size} of dim {dim}")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"{op}: pairs[{i}] tensor is on {t.device} but pairs[0] is on {device}; "
                             "all tensors must be on one device")
        nch = size // block
        if not per_pair:
            if channels is None:
                channels = (i, nch)
            elif nch != channels[1]:
                raise ValueError(f"{op}: pairs[{i}] has {nch} channels along dim {dim} but pairs[{channels[0]}] "
                                 f"has {channels[1]}; a shared keep needs equal channel counts")
        if (id(keeps[i]), nch) not in checked:  # each distinct index set is checked once per size
            _check_keep(op, f"keep" if not per_pair else f"keep[{i}]", keeps[i], nch)
            checked.add((id(keeps[i]), nch))
        key = id(t)
        plan = plans.setdefault(key, _Plan(tensor=t))
        if dim in plan.sels:
            raise ValueError(f"{op}: pairs[{i}] selects dim {dim} of a tensor that pairs[{plan.pair_ids[0]}] "
                             "already selects along that dim")
        plan.sels[dim] = _Sel(keep=keeps[i], block=block)
        plan.pair_ids.append(i)

    # Distinct tensors must not share memory: compacting one would corrupt the other.
    spans = []
    for plan in plans.values():
        t = plan.tensor
        plan.order = _dense_layout(t)
        if t.numel() == 0:
            continue
        if in_place and plan.order is None:
            raise ValueError(f"{op}: pairs[{plan.pair_ids[0]}] tensor (shape {tuple(t.shape)}, stride {t.stride()}) "
                             "is not dense; in-place compaction needs a contiguous (in some dim order) tensor, "
                             "call .contiguous() first or use select_channels")
        if in_place:
            start = t.data_ptr()
            spans.append((start, start + t.numel() * t.element_size(), plan.pair_ids[0]))
    spans.sort()
    for (s0, e0, i0), (s1, e1, i1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ValueError(f"{op}: the tensors of pairs[{i0}] and pairs[{i1}] overlap in memory")
    return list(plans.values())


def _job(t_src: torch.Tensor, dst_ptr: int, order: List[int], sels: Dict[int, _Sel]):
    """Native job description of t_src (dense, memory order `order`)."""
    item = t_src.element_size()
    shape, strides = t_src.shape, t_src.stride()
    dims = []  # (size, stride_bytes, keep_ptr, keep_len) in memory order
    for d in order:
        size, stride = shape[d], strides[d] * item
        sel = sels.get(d)
        if sel is None:
            dims.append((size, stride, 0, size))
        else:
            nch = size // sel.block
            dims.append((nch, stride * sel.block, sel.keep.data_ptr(), sel.keep.numel()))
            if sel.block > 1:
                dims.append((sel.block, stride, 0, sel.block))
    last = max(i for i, dd in enumerate(dims) if dd[2] != 0) if any(dd[2] for dd in dims) else -1
    chunk = item
    for dd in dims[last + 1:]:
        chunk *= dd[0]
    head = dims[: last + 1]
    # Merge neighbouring unselected dims that step like one dim.
    merged = []
    for dd in head:
        if merged and merged[-1][2] == 0 and dd[2] == 0 and merged[-1][1] == dd[1] * dd[0]:
            prev = merged[-1]
            merged[-1] = (prev[0] * dd[0], dd[1], 0, prev[0] * dd[0])
        else:
            merged.append(dd)
    return (t_src.data_ptr(), dst_ptr, chunk, merged)


def _new_sizes(t: torch.Tensor, sels: Dict[int, _Sel]) -> List[int]:
    sizes = list(t.shape)
    for d, sel in sels.items():
        sizes[d] = sel.keep.numel() * sel.block
    return sizes


def _fallback(t: torch.Tensor, sels: Dict[int, _Sel]) -> torch.Tensor:
    out = t
    for d, sel in sels.items():
        idx = sel.keep.to(t.device)
        if sel.block > 1:
            idx = (idx[:, None] * sel.block + torch.arange(sel.block, device=t.device)).reshape(-1)
        out = out.index_select(d, idx)
    return out


def _native_cuda(device: torch.device) -> bool:
    """True when ``device`` is a CUDA device the native compaction kernel can serve."""
    return device.type == "cuda" and hasattr(_C, "select_cuda") and _cuda_runtime_ok()


@functools.lru_cache(maxsize=None)
def _cuda_runtime_ok() -> bool:
    return int(_C.cuda_device_count()) > 0


def _cuda_launch(device: torch.device, *launches) -> None:
    """Run each list of native jobs as one kernel launch, in order, on the current stream.

    The job tables (and the kept indices) of all launches go to the device in
    one pinned, non-blocking copy; nothing here waits for the device.
    """
    launches = [jobs for jobs in launches if jobs]
    if not launches:
        return
    dev = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(dev):
        words = [int(_C.select_cuda_table_words(jobs)) for jobs in launches]
        host = torch.empty(sum(words), dtype=torch.int64, pin_memory=True)
        table = torch.empty(sum(words), dtype=torch.int64, device=device)
        blocks, off = [], 0
        for jobs, w in zip(launches, words):
            blocks.append(int(_C.select_cuda_pack(jobs, host.data_ptr() + 8 * off, table.data_ptr() + 8 * off, w)))
            off += w
        table.copy_(host, non_blocking=True)
        stream = torch.cuda.current_stream(device).cuda_stream
        off = 0
        for w, nb in zip(words, blocks):
            _C.select_cuda(table.data_ptr() + 8 * off, nb, dev, stream)
            off += w


def _cuda_compact_in_place(device: torch.device, items) -> None:
    """In-place compaction of ``items`` = [(tensor, order, sels, kept_bytes)] on a CUDA device.

    Two launches on the current stream: gather every tensor's kept grid into
    one scratch buffer, then copy each block back to the front of its tensor.
    Extra device memory: the scratch buffer, the sum of the compacted sizes
    (each rounded up to 16 bytes), plus the job table; both are released to
    torch's caching allocator on return.
    """
    offs, total = [], 0
    for *_, nbytes in items:
        offs.append(total)
        total += (nbytes + 15) // 16 * 16
    scratch = torch.empty(total, dtype=torch.uint8, device=device)
    base = scratch.data_ptr()
    gather = [_job(t, base + o, order, sels) for (t, order, sels, _), o in zip(items, offs)]
    back = [(base + o, t.data_ptr(), nbytes, []) for (t, _, _, nbytes), o in zip(items, offs)]
    _cuda_launch(device, gather, back)


def select_channels_(pairs: Sequence[Pair], keep: Keep, *, threads: Optional[int] = None) -> List[torch.Tensor]:
    """Compact every ``(tensor, dim)`` in ``pairs`` to the channels in ``keep``, in place.

    Args:
        pairs: ``(tensor, dim)`` or ``(tensor, dim, block)`` items.  With
            ``block=k`` channel ``c`` owns indices ``c*k .. c*k+k-1`` along
            ``dim`` (a Linear's input columns after flattening a ``C x H x W``
            map: ``(linear.weight, 1, H*W)``).  A tensor may appear in several
            pairs with different dims (a conv weight's dim 0 and dim 1); the
            selections are applied together in one pass.
        keep: sorted, unique channel indices (1-D integer tensor or list of
            ints) shared by all pairs, or a list of such index sets, one per
            pair (to apply many groups in one call).
        threads: CPU threads (default :func:`pyprune.ops.get_num_threads`).

    Every tensor keeps its storage and becomes the compacted, dense view of it
    (same memory format: contiguous or channels_last stay so); no second buffer
    is allocated on the CPU.  The storage keeps its old capacity: ``clone()``
    the result to release it.  Works on parameters and buffers (autograd is
    bypassed, like ``.data`` assignment).  On CUDA devices the native kernel
    gathers every tensor of the call in one launch into a scratch buffer and
    copies back in a second one, both on the current stream without
    synchronising: the extra device memory is the total compacted size (plus
    a small job table), freed on return.  On other devices (or a CPU-only
    build) the selection is done with ``index_select`` and the tensor is
    re-pointed to the new storage.

    All arguments are validated before any memory is touched: on error nothing
    is modified.  Returns the tensors of ``pairs`` (compacted), in order.
    """
    op = "select_channels_"
    nthreads = resolve_threads(op, threads)
    plans = _validate(op, pairs, keep, in_place=True)
    jobs = []
    cuda_items = []
    updates = []
    for plan in plans:
        t = plan.tensor
        sizes = _new_sizes(t, plan.sels)
        native_cuda = t.device.type != "cpu" and _native_cuda(t.device)
        if t.device.type != "cpu" and not native_cuda:
            updates.append((t, None, _fallback(t, plan.sels)))
            continue
        order = plan.order
        if native_cuda:
            nbytes = math.prod(sizes) * t.element_size()
            if t.numel() > 0 and nbytes > 0:
                cuda_items.append((t, order, plan.sels, nbytes))
        elif t.numel() > 0:
            jobs.append(_job(t, t.data_ptr(), order, plan.sels))
        updates.append((t, (sizes, _dense_strides(sizes, order)), None))
    if jobs:
        _C.select_cpu(jobs, nthreads)
    if cuda_items:
        _cuda_compact_in_place(cuda_items[0][0].device, cuda_items)
    with torch.no_grad():
        for t, layout, new in updates:
            if new is not None:
                t.set_(new)
            else:
                t.set_(t.untyped_storage(), t.storage_offset(), layout[0], layout[1])
    return [p[0] for p in pairs]


def select_channels(pairs: Sequence[Pair], keep: Keep, *, threads: Optional[int] = None) -> List[torch.Tensor]:
    """Out-of-place :func:`select_channels_`: returns new tensors, one per pair.

    Inputs are left untouched and may have any strides.  Pairs that name the
    same tensor share one result holding all of their selections.  On CUDA
    devices all results are written by one native launch on the current stream
    (non-dense inputs are first made contiguous by torch); no extra memory
    beyond the results and a small job table.
    """
    op = "select_channels"
    nthreads = resolve_threads(op, threads)
    plans = _validate(op, pairs, keep, in_place=False)
    jobs = []
    cuda_jobs = []
    results: Dict[int, torch.Tensor] = {}
    keepalive = []
    for plan in plans:
        t = plan.tensor
        sizes = _new_sizes(t, plan.sels)
        native_cuda = t.device.type != "cpu" and _native_cuda(t.device)
        if t.device.type != "cpu" and not native_cuda:
            results[id(t)] = _fallback(t, plan.sels)
            continue
        src = t if plan.order is not None else t.contiguous()
        order = plan.order if plan.order is not None else _dense_layout(src)
        out = torch.empty_strided(sizes, _dense_strides(sizes, order), dtype=t.dtype, device=t.device)
        if out.numel() > 0:
            (cuda_jobs if native_cuda else jobs).append(_job(src, out.data_ptr(), order, plan.sels))
            keepalive.append(src)
        results[id(t)] = out
    if jobs:
        _C.select_cpu(jobs, nthreads)
    if cuda_jobs:
        _cuda_launch(plans[0].tensor.device, cuda_jobs)
    return [results[id(p[0])] for p in pairs]
