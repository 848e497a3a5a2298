"""Channel compaction: ``select_channels_(pairs, keep)`` and ``select_channels``."""
from __future__ import annotations

import functools
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .. import _C
from ._common import resolve_threads

__all__ = ["select_channels_", "select_channels", "Compaction"]

Pair = Union[Tuple[torch.Tensor, int], Tuple[torch.Tensor, int, int]]
Keep = Union[torch.Tensor, Sequence[int], Sequence[torch.Tensor]]


# Per distinct tensor of a call: [index, tensor, {dim: (keep, block)}, first pair].
_Entry = list


def _as_index(op: str, what: str, k) -> Tuple[torch.Tensor, int, int]:
    """(int64 CPU contiguous 1-D tensor, its data_ptr, its length) of an index set."""
    if isinstance(k, torch.Tensor):
        if k.dtype is torch.int64 and k.is_cpu and k.dim() == 1 and k.is_contiguous():
            return k, k.data_ptr(), k.numel()  # the common case: nothing to convert
        if k.dtype.is_floating_point or k.dtype.is_complex or k.dtype == torch.bool:
            raise TypeError(f"{op}: {what} must hold integers, got dtype {k.dtype}")
        if k.dim() != 1:
            raise ValueError(f"{op}: {what} must be 1-D, got shape {tuple(k.shape)}")
        k = k.detach().to(device="cpu", dtype=torch.int64).contiguous()
        return k, k.data_ptr(), k.numel()
    if isinstance(k, (list, tuple)):
        for v in k:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{op}: {what} must hold integers, got {type(v).__name__} {v!r}")
        k = torch.tensor(list(k), dtype=torch.int64)
        return k, k.data_ptr(), k.numel()
    raise TypeError(f"{op}: {what} must be a 1-D integer tensor or a sequence of ints, got {type(k).__name__}")


def _check_keep(op: str, what: str, keep: Tuple[torch.Tensor, int, int], size: int) -> None:
    # The scan runs natively on the raw indices: a few torch ops per index set
    # used to be a large part of a call's cost.
    code, i = _C.select_check_keep(keep[1], keep[2], size)
    if code == 0:
        return
    k = keep[0]
    if code == 3:
        raise ValueError(f"{op}: {what} index {int(k[i])} is out of range for {size} channels")
    kind = "duplicate" if code == 1 else "unsorted"
    raise ValueError(f"{op}: {what} must be sorted and unique, got {kind} entries "
                     f"{int(k[i])}, {int(k[i + 1])} at positions {i}, {i + 1}")


# The exact types the native fast path reads as tensors (subclasses take the Python path).
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _validate(op: str, pairs, keep, in_place: bool):
    """Checks every argument; returns (tensors, sels, batch, device).

    ``tensors`` are the distinct tensors of ``pairs`` in order of first
    appearance, ``batch`` the native ``_C.SelectBatch`` of them (memory order,
    compacted layout and job of each) and ``sels`` their selections as
    ``{dim: (keep, block)}`` (None when the fast path served the call: only the
    index_select fallback needs them).  The common call is checked by the
    native fast path; anything it does not accept, every error included, goes
    through the Python checks below, whose order decides which error a bad call
    raises.
    """
    if not isinstance(pairs, (list, tuple)) or (pairs and isinstance(pairs[0], torch.Tensor)):
        got = "a single (tensor, dim) pair" if isinstance(pairs, (list, tuple)) else type(pairs).__name__
        raise TypeError(f"{op}: pairs must be a list of (tensor, dim) or (tensor, dim, block), got {got}")
    per_pair = isinstance(keep, (list, tuple)) and len(keep) > 0 and all(
        isinstance(k, (torch.Tensor, list, tuple)) for k in keep)
    if per_pair:
        if len(keep) != len(pairs):
            raise ValueError(f"{op}: keep has {len(keep)} index lists for {len(pairs)} pairs")
        # A plan passes one index tensor for all pairs of a group: convert each once.
        converted: Dict[int, Tuple[torch.Tensor, int, int]] = {}
        keeps = []
        for i, k in enumerate(keep):
            c = converted.get(id(k))
            if c is None:
                c = converted[id(k)] = _as_index(op, f"keep[{i}]", k)
            keeps.append(c)
    else:
        keeps = [_as_index(op, "keep", keep)] * len(pairs)
    refuse_inference = in_place and not torch.is_inference_mode_enabled()
    batch = _C.SelectBatch.from_pairs(pairs, keeps, not per_pair, in_place, refuse_inference,
                                      _TENSOR_TYPES)
    if batch is not None:
        device = batch.device()
        if device.type == "cpu" or _native_cuda(device):
            return batch.tensors(), None, batch, device
    return _validate_pairs(op, pairs, keeps, per_pair, in_place)


def _validate_pairs(op: str, pairs, keeps, per_pair: bool, in_place: bool):
    """The Python checks of :func:`_validate`, pair by pair."""
    entries: Dict[int, _Entry] = {}
    metas = []  # per tensor: (data_ptr, element_size, shape, strides, first pair)
    flat = []  # per pair: tensor index, dim, keep data_ptr, keep length, block
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
        if in_place and t.is_inference() and not torch.is_inference_mode_enabled():
            raise ValueError(f"{op}: pairs[{i}] tensor is an inference tensor (made under "
                             "torch.inference_mode()), which torch lets change in place only "
                             "inside inference mode: call this under torch.inference_mode(), "
                             "or clone the tensor first")
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
        k = keeps[i]
        if (id(k), nch) not in checked:  # each distinct index set is checked once per size
            _check_keep(op, f"keep[{i}]" if per_pair else "keep", k, nch)
            checked.add((id(k), nch))
        e = entries.get(id(t))
        if e is None:
            # data_ptr of a backend without storage may raise; only CPU and CUDA
            # tensors (and in-place overlap checks) need it.
            ptr = t.data_ptr() if t.is_cpu or t.is_cuda or (in_place and t.numel()) else 0
            e = entries[id(t)] = [len(metas), t, {}, i]
            metas.append((ptr, t.element_size(), t.shape, t.stride(), i))
        sels = e[2]
        if dim in sels:
            raise ValueError(f"{op}: pairs[{i}] selects dim {dim} of a tensor that pairs[{e[3]}] "
                             "already selects along that dim")
        sels[dim] = (k[0], block)
        flat += (e[0], dim, k[1], k[2], block)

    batch = _C.SelectBatch(metas, flat, keeps)
    if in_place:
        bad = batch.not_dense(True)
        if bad:
            e = list(entries.values())[bad[0]]
            t = e[1]
            raise ValueError(f"{op}: pairs[{e[3]}] tensor (shape {tuple(t.shape)}, stride {t.stride()}) "
                             "is not dense; in-place compaction needs a contiguous (in some dim order) tensor, "
                             "call .contiguous() first or use select_channels")
        # Distinct tensors must not share memory: compacting one would corrupt the other.
        overlap = batch.overlap()
        if overlap is not None:
            raise ValueError(f"{op}: the tensors of pairs[{overlap[0]}] and pairs[{overlap[1]}] overlap in memory")
    values = entries.values()
    return [e[1] for e in values], [e[2] for e in values], batch, device


def _fallback(t: torch.Tensor, sels: Dict[int, Tuple[torch.Tensor, int]]) -> torch.Tensor:
    out = t
    for d, (keep, block) in sels.items():
        idx = keep.to(t.device)
        if block > 1:
            idx = (idx[:, None] * block + torch.arange(block, device=t.device)).reshape(-1)
        out = out.index_select(d, idx)
    return out


def _native_cuda(device: torch.device) -> bool:
    """True when ``device`` is a CUDA device the native compaction kernel can serve."""
    return device.type == "cuda" and hasattr(_C, "select_cuda") and _cuda_runtime_ok()


@functools.lru_cache(maxsize=None)
def _cuda_runtime_ok() -> bool:
    return int(_C.cuda_device_count()) > 0


def _cuda_launch(device: torch.device, batch, dsts: Optional[List[int]]) -> None:
    """Compact the tensors of ``batch`` on a CUDA device, on the current stream.

    Into ``dsts`` (one launch), or in place with ``dsts=None``: one launch
    gathers every tensor's kept grid into a scratch buffer, a second copies
    each block back to the front of its tensor.  Extra device memory: the
    scratch buffer, the sum of the compacted sizes (each rounded up to 16
    bytes), plus the job tables; both are released to torch's caching
    allocator on return.  The job tables (and the kept indices) go to the
    device in one pinned, non-blocking copy; nothing here waits for the device.
    """
    dev = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(dev):
        scratch = None
        if dsts is None:
            nbytes = batch.cuda_scratch_bytes()
            if nbytes == 0:
                return
            scratch = torch.empty(nbytes, dtype=torch.uint8, device=device)
        words = batch.cuda_table_words(dsts)
        if words == 0:
            return
        host = torch.empty(words, dtype=torch.int64, pin_memory=True)
        table = torch.empty(words, dtype=torch.int64, device=device)
        launches = batch.cuda_pack(dsts, 0 if scratch is None else scratch.data_ptr(), host.data_ptr(),
                                   table.data_ptr(), words)
        table.copy_(host, non_blocking=True)
        stream = torch.cuda.current_stream(device).cuda_stream
        for off, blocks in launches:
            _C.select_cuda(table.data_ptr() + 8 * off, blocks, dev, stream)


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
    the result to release it (or use :class:`Compaction` with
    ``compact_storage=True``).  Works on parameters and buffers: each tensor
    gets its new layout through ``Tensor.set_`` under ``torch.no_grad()``, so it
    stays the same object, its version counter is bumped and a leaf gets a fresh
    gradient accumulator of the new shape.  On CUDA devices the native kernel
    gathers every tensor of the call in one launch into a scratch buffer and
    copies back in a second one, both on the current stream without
    synchronising: the extra device memory is the total compacted size (plus
    a small job table), freed on return.  On other devices (or a CPU-only
    build) the selection is done with ``index_select`` and the tensor is
    re-pointed to the new storage.

    All arguments are validated before any memory is touched: on error nothing
    is modified.  Inference tensors (made under :func:`torch.inference_mode`)
    are refused outside inference mode, where torch forbids changing them in
    place.  Returns the tensors of ``pairs`` (compacted), in order.
    """
    Compaction(pairs, keep, threads=threads).run(undoable=False)
    return [p[0] for p in pairs]


def _repoint(tensors: Sequence[torch.Tensor], targets: Sequence[tuple]) -> None:
    """``t.set_(storage, offset, sizes, strides)`` for each pair, under no_grad.  Inside
    inference mode a normal tensor is re-pointed outside it: there ``set_`` would skip
    autograd's bookkeeping and leave a leaf its old gradient accumulator."""
    inference = torch.is_inference_mode_enabled()
    with torch.no_grad():
        for t, target in zip(tensors, targets):
            if inference and not t.is_inference():
                with torch.inference_mode(False), torch.no_grad():
                    t.set_(*target)
            else:
                t.set_(*target)


class Compaction:
    """One validated :func:`select_channels_` call over a batch of tensors: run it,
    in place or into right-sized new storages, and undo it (surgery's rollback).

    Args:
        pairs, keep, threads: as for :func:`select_channels_`.
        op: the function name error messages start with.

    The constructor validates everything, with the checks of
    :func:`select_channels_` (dense, non-overlapping, no inference tensors outside
    inference mode); nothing is touched on error.  :meth:`run` then compacts every
    tensor, either

    * in place (``compact_storage=False``, :func:`select_channels_`): each tensor
      becomes the compacted view of its own storage, which keeps its old capacity
      (no second buffer on the CPU), or
    * into new storage (``compact_storage=True``): the kept values of every tensor
      are copied by one native call into a new storage of exactly the compacted
      size, the sources are only read, and each tensor is then re-pointed to its
      new storage; the old storages are freed as soon as nothing else holds them.
      Extra memory while it runs: the compacted sizes of all tensors (the new
      storages themselves); nothing needs backing up for :meth:`undo`.

    Either way each tensor gets its new layout through ``Tensor.set_`` under
    ``torch.no_grad()``: it keeps its identity (a Parameter stays the same
    object), its version counter is bumped (autograd refuses saved copies of the
    old tensor), and autograd gives a leaf a fresh gradient accumulator of the new
    shape at its next use (a graph recorded before the call holds the old one).

    :meth:`undo` afterwards (typically after a later failure) puts every tensor
    back: its storage and layout always; its data too when the compaction did not
    overwrite it (``compact_storage=True``, or off the CPU and CUDA) or ``backup``
    saved what it overwrote (on the CPU the native batch copies the first
    compacted-size bytes of every tensor into one buffer it owns; on a CUDA device
    torch clones the written front of each tensor).  ``run(undoable=False)``
    keeps nothing for an undo (the plain :func:`select_channels_`).
    """

    def __init__(self, pairs: Sequence[Pair], keep: Keep, *, threads: Optional[int] = None,
                 op: str = "select_channels_") -> None:
        self.nthreads = resolve_threads(op, threads)
        self.tensors, self.sels, self.batch, self.device = _validate(op, pairs, keep, in_place=True)
        self._native = bool(self.tensors) and (self.device.type == "cpu" or _native_cuda(self.device))
        # None until run() starts; then per tensor (storage, offset, sizes, strides)
        self._saved: Optional[list] = None
        self._fronts: Optional[list] = None  # CUDA in place with backup: the overwritten fronts
        self._snapshot = False

    def run(self, backup: bool = False, undoable: bool = True, *, compact_storage: bool = False) -> None:
        """Compacts every tensor (see the class docstring); ``backup`` matters only in
        place on the CPU or CUDA, where the data is overwritten."""
        tensors = self.tensors
        if not tensors:
            return
        if undoable:
            self._saved = [(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
                           for t in tensors]
        if not self._native:  # index_select into new tensors: nothing is overwritten
            targets = [(n.untyped_storage(), n.storage_offset(), n.size(), n.stride())
                       for n in (_fallback(t, s) for t, s in zip(tensors, self.sels))]
        elif compact_storage:
            targets = self._copy_out()
        else:
            targets = self._in_place(backup and undoable)
        _repoint(tensors, targets)

    def _copy_out(self) -> list:
        outs = [torch.empty_strided(sizes, strides, dtype=t.dtype, device=self.device)
                for t, (sizes, strides) in zip(self.tensors, self.batch.layouts())]
        dsts = [out.data_ptr() for out in outs]
        if self.device.type == "cpu":
            self.batch.run_cpu(dsts, self.nthreads)
        else:
            _cuda_launch(self.device, self.batch, dsts)
        return [(out.untyped_storage(), 0, out.size(), out.stride()) for out in outs]

    def _in_place(self, backup: bool) -> list:
        tensors, batch = self.tensors, self.batch
        layouts = batch.layouts()
        if self.device.type == "cpu":
            if backup:
                batch.snapshot(self.nthreads)
                self._snapshot = True
            batch.run_cpu(None, self.nthreads)
        else:
            if backup:  # keep what the compaction overwrites: the front of each tensor
                with torch.no_grad():
                    self._fronts = [t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(),
                                                        (math.prod(sizes),)).clone()
                                    for t, (sizes, _) in zip(tensors, layouts)]
            _cuda_launch(self.device, batch, None)
        return [(t.untyped_storage(), t.storage_offset(), sizes, strides)
                for t, (sizes, strides) in zip(tensors, layouts)]

    def undo(self) -> None:
        """Puts every tensor back as it was before :meth:`run` (see the class
        docstring for when its data comes back too); nothing to do if ``run``
        never started."""
        if self._saved is None:
            return
        _repoint(self.tensors, self._saved)
        with torch.no_grad():
            if self._snapshot:
                self.batch.restore(self.nthreads)
            if self._fronts is not None:
                for (storage, offset, _, _), front in zip(self._saved, self._fronts):
                    torch.empty(0, dtype=front.dtype, device=front.device).set_(
                        storage, offset, (front.numel(),)).copy_(front)


class _InPlace(Compaction):
    """The former name of :class:`Compaction` (positional ``op, pairs, keep, threads``)."""

    def __init__(self, op: str, pairs: Sequence[Pair], keep: Keep, threads: Optional[int]) -> None:
        super().__init__(pairs, keep, threads=threads, op=op)


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
    tensors, sels, batch, device = _validate(op, pairs, keep, in_place=False)
    if not tensors:
        return []
    if device.type != "cpu" and not _native_cuda(device):
        outs = [_fallback(t, s) for t, s in zip(tensors, sels)]
    else:
        keepalive = []
        for i in batch.not_dense(False):  # the kernel reads dense sources
            src = tensors[i].contiguous()
            batch.set_source(i, src.data_ptr(), src.stride())
            keepalive.append(src)
        outs = [torch.empty_strided(sizes, strides, dtype=t.dtype, device=device)
                for t, (sizes, strides) in zip(tensors, batch.layouts())]
        dsts = [out.data_ptr() for out in outs]
        if device.type == "cpu":
            batch.run_cpu(dsts, nthreads)
        else:
            _cuda_launch(device, batch, dsts)
    index = {id(t): i for i, t in enumerate(tensors)}
    return [outs[index[id(p[0])]] for p in pairs]
