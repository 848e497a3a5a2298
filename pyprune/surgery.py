"""Surgery: remove channels physically, atomically.  The only code that mutates models.

:func:`apply_plan` turns a :class:`~pyprune.plan.Plan` into one batched channel
selection (:class:`pyprune.ops.select.Compaction`) covering every parameter and buffer
of the model, their ``.grad`` and the optimizer's per-parameter state (momentum
buffers, Adam moments, ...), then updates the module attributes (``in_channels``,
``num_features``, ``groups`` of depthwise convs, ``in_features`` ...).

Memory: by default every pruned tensor ends up in a new storage of exactly its pruned
size (the kept values are copied out of place by one native call, then each tensor is
re-pointed to its new storage), so ``untyped_storage().nbytes()`` equals
``numel() * element_size()`` and ``torch.save`` writes the pruned size.  The extra
memory while it runs is the pruned size of the tensors it touches; the dense storages
are freed on return unless something else still holds them (a graph recorded before
pruning, a view, an EMA copy).  ``zero_copy=True`` instead compacts each tensor in its
own storage (no new memory; each storage keeps its dense capacity until the tensor is
cloned).

Atomicity: the whole plan is validated and every new value computed before anything
changes.  If the op or an attribute update still fails, every touched tensor is put
back (storage, shape, strides and data) and every attribute restored, then the error is
re-raised.  The default overwrites nothing, so that costs nothing.  With
``zero_copy=True`` the data is overwritten in place, and ``backup=True`` (the default)
copies beforehand the part of each tensor's storage that the compaction overwrites (its
first new-numel elements; a quarter of a conv weight pruned 50% on both sides; on the
CPU one native copy into a buffer the op owns); ``backup=False`` gives up only the data
of a failure that comes once the op has started writing: storages, shapes, strides and
attributes are restored either way.

Training after pruning
----------------------
What stays the same object: every ``nn.Parameter`` and buffer (``model.conv.weight``
before and after is the same tensor), every ``.grad`` tensor, the optimizer's state
tensors, and so the optimizer itself (pass it as ``optimizer=`` so that its state is
pruned too; scalar state such as Adam's ``step`` is kept).  SGD, Adam and AdamW, with
``foreach`` or ``fused``, ``GradScaler``, gradient clipping, hooks registered on the
parameters (``Tensor.register_hook``, ``register_post_accumulate_grad_hook``) and
``torch.compile`` (it recompiles for the new shapes) keep working.

What changes: each tensor gets its new layout through ``Tensor.set_``, which bumps its
version counter and gives each parameter a fresh gradient accumulator (the autograd
node ``.grad`` is accumulated by) for its new shape at its next forward pass.  So:

* An autograd graph recorded before pruning (a kept ``loss`` or output) cannot be
  backpropagated: calling ``backward()`` on it raises ``RuntimeError`` naming
  pyprune.prune, never a wrong gradient.  Graphs recorded after pruning train
  normally, while the old one is still alive.
* Anything holding the old accumulators or the old shapes must be rebuilt:
  ``torch.nn.parallel.DistributedDataParallel`` (its reducer hooks the accumulators
  and sizes its buckets at construction; prune ``ddp.module``, then wrap again:
  ``ddp = DistributedDataParallel(ddp.module, ...)``), FSDP, and hooks registered on
  accumulator nodes (``p.view_as(p).grad_fn.next_functions[0][0]``).
* Copies of the model are separate tensors and stay dense: prune an EMA copy
  (``torch.optim.swa_utils.AveragedModel``, a ``copy.deepcopy``) taken before pruning
  with the same record, ``replay(ema.module, history(model)[-1:])``, or copy it again
  from the pruned model.  An optimizer that was not passed as ``optimizer=`` must be
  rebuilt (its state still has the dense shapes).

Each surgery appends a plain-data record to ``model._pyprune_history`` (names, dims,
blocks, keep-indices and new attribute values); :func:`replay` re-applies such records
to a freshly built dense model (used by :func:`pyprune.io.load`).
"""
from __future__ import annotations

import gc
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.autograd.graph import get_gradient_edge

from .ops.select import Compaction
from .graph._core import module_dict
from .plan import Plan, _kept_mask, _layouts

__all__ = ["apply_plan", "replay", "history", "HISTORY_ATTR"]

HISTORY_ATTR = "_pyprune_history"
_log = logging.getLogger("pyprune")
_MODULE_SETATTR = nn.Module.__setattr__


def history(model: nn.Module) -> List[Dict[str, Any]]:
    """The surgery records of ``model`` (empty for a model never pruned)."""
    return list(getattr(model, HISTORY_ATTR, []))


class _Lookup:
    """Modules and tensors of a model by qualified name (one walk of the model)."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = module_dict(model)

    def module(self, name: str) -> nn.Module:
        mod = self.modules.get(name)
        if mod is None:
            raise ValueError(f"the model has no module {name!r}")
        return mod

    def tensor(self, name: str) -> torch.Tensor:
        mod_name, _, attr = name.rpartition(".")
        mod = self.modules.get(mod_name)
        if mod is None:
            raise ValueError(f"the model has no module {mod_name!r} (for tensor {name!r})")
        t = mod._parameters.get(attr)  # what getattr finds, without a failed lookup first
        if t is None:
            t = mod._buffers.get(attr)
        if t is None:
            t = getattr(mod, attr, None)
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"the model has no tensor {name!r}")
        return t


@dataclass
class _Prepared:
    pairs: List[Tuple[torch.Tensor, int, int]]
    keeps: List[torch.Tensor]
    attrs: List[Tuple[nn.Module, str, Any, Any]]  # (module, attr, old, new)
    record: Dict[str, Any]


def _check_keep(gid: Any, k: Any, size: int) -> torch.Tensor:
    if not isinstance(k, torch.Tensor):
        k = torch.as_tensor(k)
    if k.dtype.is_floating_point or k.dtype.is_complex or k.dtype == torch.bool or k.dim() != 1:
        raise ValueError(f"plan.keep[{gid}] must be a 1-D integer tensor, got dtype {k.dtype} "
                         f"shape {tuple(k.shape)}")
    k = k.to(device="cpu", dtype=torch.int64)
    if k.numel() == 0:
        raise ValueError(f"plan.keep[{gid}] is empty: a group must keep at least one channel")
    if k.numel() > 1 and bool((k[1:] <= k[:-1]).any()):
        raise ValueError(f"plan.keep[{gid}] must be sorted and unique")
    if int(k[0]) < 0 or int(k[-1]) >= size:
        raise ValueError(f"plan.keep[{gid}] has an index out of range for {size} channels")
    return k


def _checked_mask(graph: Any, keep: Dict[Any, Any]) -> Optional[torch.Tensor]:
    """The kept-channel mask of ``keep`` when every entry is a valid group id with a
    non-empty, sorted, unique, in-range 1-D int64 CPU tensor (checked for all groups at
    once); None otherwise (the caller's per-group checks then say what is wrong)."""
    n_groups = len(graph.groups)
    sizes = []
    for gid, k in keep.items():
        if type(gid) is not int or not 0 <= gid < n_groups or not graph.groups[gid].prunable:
            return None
        if not isinstance(k, torch.Tensor) or k.dtype is not torch.int64 or k.dim() != 1 \
                or not k.is_cpu or k.numel() == 0 or k.is_neg():
            return None
        sizes.append(graph.groups[gid].size)
    if keep:
        arrs = [k.numpy() for k in keep.values()]
        counts = np.array([a.size for a in arrs], dtype=np.int64)
        flat = np.concatenate(arrs)
        first = np.cumsum(counts) - counts  # each group's first position
        up = np.ones(flat.size, dtype=bool)
        up[1:] = flat[1:] > flat[:-1]
        up[first] = True
        if not up.all() or (flat < 0).any() or \
                not (flat < np.repeat(np.array(sizes, dtype=np.int64), counts)).all():
            return None
    return _kept_mask(graph, keep)


def _prepare(model: nn.Module, plan: Plan, optimizer: Optional[torch.optim.Optimizer]) -> _Prepared:
    graph = plan.graph
    if graph._model_ref is not model:
        raise ValueError("the plan was made for a graph of another model")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    mask = _checked_mask(graph, plan.keep)
    if mask is None:  # something is off: the per-group checks raise the first error
        checked: Dict[int, torch.Tensor] = {}
        for gid, k in plan.keep.items():
            if isinstance(gid, bool) or not isinstance(gid, int) or not 0 <= gid < len(graph.groups):
                raise ValueError(f"plan.keep has an unknown group id {gid!r}")
            g = graph.groups[gid]
            if not g.prunable:
                raise ValueError(f"plan.keep names group {gid}, which is not prunable: "
                                 + "; ".join(g.reasons))
            checked[gid] = _check_keep(gid, k, g.size)
        mask = _kept_mask(graph, checked)
    look = _Lookup(model)
    pairs: List[Tuple[torch.Tensor, int, int]] = []
    keeps: List[torch.Tensor] = []
    tensors_rec: List[Dict[str, Any]] = []
    opt_state = optimizer.state if optimizer is not None else {}
    # The kept channels of every distinct member layout, for all layouts at once:
    # None where the layout keeps everything, else (local indices, as a list).
    layouts, layout_of, idx = _layouts(graph)
    local_of: List[Optional[Tuple[torch.Tensor, List[int]]]] = [None] * len(layouts)
    if layouts:
        lens = np.array([len(t) for t in layouts], dtype=np.int64)
        kept = mask.numpy()[idx.numpy()]
        seg = np.repeat(np.arange(len(layouts), dtype=np.int64), lens)
        removed = np.bincount(seg[~kept], minlength=len(layouts)).tolist()
        if any(removed):
            starts = np.cumsum(lens) - lens
            where = np.flatnonzero(kept)
            local_all = where - starts[seg[where]]
            counts = (lens - np.array(removed, dtype=np.int64)).tolist()
            as_list = local_all.tolist()
            at = 0
            for lid, (local, c) in enumerate(zip(torch.split(torch.from_numpy(local_all), counts),
                                                 counts)):
                if removed[lid]:
                    local_of[lid] = (local, as_list[at:at + c])
                at += c
    n_tensor = len(graph.tensor_members)

    for i, m in enumerate(graph.tensor_members):
        lk = local_of[layout_of[i]]
        if lk is None:
            continue
        local, local_list = lk
        if not local_list:
            raise ValueError(f"the plan removes every channel of {m.name} (dim {m.dim}); "
                             "keep at least one channel per layer (min_channels)")
        t = look.tensor(m.name)
        shape, dim, block = t.shape, m.dim, m.block
        expect = len(m.elems) * block
        if len(shape) <= dim or shape[dim] != expect:
            raise ValueError(f"{m.name} has shape {tuple(shape)} but the graph expects "
                             f"{expect} along dim {dim}: the graph is stale, rebuild it")
        pairs.append((t, dim, block))
        keeps.append(local)
        tensors_rec.append({"name": m.name, "dim": dim, "block": block, "keep": list(local_list)})
        grad = t.grad
        if grad is None and not opt_state:
            continue
        extra = []
        if grad is not None:
            extra.append(("grad", grad))
        if opt_state:  # (hashing a tensor runs Python: skip it without an optimizer)
            for key, v in (opt_state.get(t, {}) or {}).items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    extra.append((f"optimizer state {key!r}", v))
        for what, v in extra:
            if v.shape != t.shape:
                raise ValueError(f"{what} of {m.name} has shape {tuple(v.shape)}, not the "
                                 f"parameter's {tuple(t.shape)}; cannot prune it consistently")
            pairs.append((v, m.dim, m.block))
            keeps.append(local)
    attrs: List[Tuple[nn.Module, str, Any, Any]] = []
    attrs_rec: List[Dict[str, Any]] = []
    for i, a in enumerate(graph.attr_members):
        lk = local_of[layout_of[n_tensor + i]]
        if lk is None:
            continue
        mod = look.module(a.module)
        old = getattr(mod, a.attr, None)
        # a.index: the attribute is a tuple (LayerNorm.normalized_shape) whose entry
        # a.index counts the channels; None: a plain int attribute (out_channels).
        if a.index is None:
            cur = old
        elif isinstance(old, (tuple, list)) and -len(old) <= a.index < len(old):
            cur = old[a.index]
        else:
            cur = None
        if cur != len(a.elems) * a.block:
            raise ValueError(f"{a.module}.{a.attr} is {old!r} but the graph expects "
                             f"{len(a.elems) * a.block}: the graph is stale, rebuild it")
        new = len(lk[1]) * a.block
        if a.index is not None:
            at = a.index % len(old)
            new = type(old)(new if j == at else v for j, v in enumerate(old))
        attrs.append((mod, a.attr, old, new))
        attrs_rec.append({"module": a.module, "attr": a.attr, "value": new})
    return _Prepared(pairs, keeps, attrs, {"tensors": tensors_rec, "attrs": attrs_rec})


def _attr_value(v: Any) -> Any:
    """A recorded attribute value: an int, or a tuple of ints (``normalized_shape``)."""
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return int(v)


class _StaleGraphHook:
    """A node pre-hook that refuses to backpropagate through a graph recorded before
    a surgery changed the shapes of the parameters it reaches."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, message: str) -> None:
        self.message = message

    def __call__(self, grad_outputs: Any) -> None:
        raise RuntimeError(self.message)


def _stale_message(names: Sequence[str]) -> str:
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return (f"pyprune: this autograd graph was built before pyprune.prune (surgery.apply_plan) "
            f"removed channels of {len(names)} tensor(s) ({shown}); its gradients have the "
            "old shapes and cannot be backpropagated into the pruned model. Call backward() "
            "before pruning, or run the forward pass again after it.")


def _accumulators(tensors: Sequence[torch.Tensor]) -> List[Tuple[torch.Tensor, Any]]:
    """(leaf, its gradient accumulator) for every leaf of ``tensors`` that requires grad:
    the node a graph recorded so far feeds (created if no graph holds one)."""
    out = []
    with torch.inference_mode(False), torch.enable_grad():  # where the node can be looked up
        for t in tensors:
            if t.requires_grad and t.is_leaf and not t.is_inference():
                out.append((t, get_gradient_edge(t).node))
    return out


def _guard_stale_graphs(model: nn.Module, accs: List[Tuple[torch.Tensor, Any]],
                        names: Sequence[str]) -> None:
    """Makes backpropagating through a graph recorded before the surgery raise a clear
    error instead of torch's shape or version-counter errors.

    Every old accumulator gets a pre-hook that raises; when one of them is still held
    (a loss, an output or a logged tensor of an earlier forward is alive), so does the
    ``grad_fn`` of every live tensor whose graph reaches one: a backward call starts at
    such a node, before any node that unpacks a saved parameter (which would fail with
    torch's "modified by an inplace operation").  Finding them walks the objects the
    garbage collector tracks, only in that case; a DistributedDataParallel wrapping
    ``model`` (its reducer holds the old accumulators) is reported then, as a warning
    on ``logging.getLogger("pyprune")``.
    """
    if not accs:
        return
    message = _stale_message(list(names))
    alive = []
    for t, node in accs:
        hook = _StaleGraphHook(message)
        node.register_prehook(hook)
        alive.append(weakref.ref(hook))
    targets = {id(t) for t, _ in accs}
    del accs[:], node, hook  # an accumulator no graph holds dies here, with its hook
    if not any(r() is not None for r in alive):
        return
    hook = _StaleGraphHook(message)
    memo: Dict[int, bool] = {}  # node id -> reaches an old accumulator of a target
    held: List[Any] = []  # keeps every visited node (and so its id) alive during the walk

    def reaches(root: Any) -> bool:
        key = id(root)
        if key in memo:
            return memo[key]
        memo[key] = False
        held.append(root)
        stack = [(root, iter(root.next_functions))]
        while stack:
            node, it = stack[-1]
            for nxt, _ in it:
                if nxt is None:
                    continue
                k = id(nxt)
                if k not in memo:
                    held.append(nxt)
                    var = getattr(nxt, "variable", None)  # set on AccumulateGrad nodes only
                    if var is not None:
                        memo[k] = id(var) in targets
                    else:
                        memo[k] = False  # final once its inputs are done (graphs are acyclic)
                        stack.append((nxt, iter(nxt.next_functions)))
                        break
                if memo[k]:
                    memo[id(node)] = True
            else:
                stack.pop()
                if stack and memo[id(node)]:
                    memo[id(stack[-1][0])] = True
        return memo[key]

    hooked = set()
    wrappers = 0
    ddp_type = nn.parallel.DistributedDataParallel
    kinds: Dict[type, int] = {}  # per type: 0 other, 1 tensor, 2 DDP (one subclass check each)
    for obj in gc.get_objects():
        tp = type(obj)
        kind = kinds.get(tp)
        if kind is None:
            kind = kinds[tp] = 1 if issubclass(tp, torch.Tensor) else 2 if issubclass(tp, ddp_type) else 0
        if kind != 1:
            if kind == 2 and obj.__dict__.get("_modules", {}).get("module") is model:
                wrappers += 1
            continue
        try:
            fn = obj.grad_fn
        except (RuntimeError, AttributeError, TypeError):  # tensors without autograd metadata
            continue
        if fn is not None and id(fn) not in hooked and reaches(fn):
            hooked.add(id(fn))
            fn.register_prehook(hook)
    _log.info("surgery: %d live autograd graph(s) built before pruning now refuse backward()",
              len(hooked))
    if wrappers:
        _log.warning(
            "the pruned model is the .module of a DistributedDataParallel built before "
            "pruning; its reducer hooks the old gradient accumulators and sizes its buckets for "
            "the old shapes, so it would no longer synchronise gradients. Wrap the pruned model "
            "again: ddp = DistributedDataParallel(ddp.module, ...)")


def _commit(model: nn.Module, prep: _Prepared, backup: bool, zero_copy: bool = False) -> None:
    # Validated before anything changes.  By default the kept values go to new
    # right-sized storages and nothing is overwritten; with ``zero_copy`` the tensors are
    # compacted in place and ``backup`` first saves what that overwrites (the front of
    # each tensor's storage region).  Either way undo() puts back every tensor's storage,
    # shape and strides, and its data unless it was overwritten without a backup.
    job = Compaction(prep.pairs, prep.keeps) if prep.pairs else None
    hist = getattr(model, HISTORY_ATTR, None)
    had_hist = hist is not None
    done_attrs: List[Tuple[nn.Module, str, Any]] = []
    accs = _accumulators(job.tensors) if job is not None else []
    try:
        if job is not None:
            with torch.no_grad():
                job.run(backup, compact_storage=not zero_copy)
        for mod, attr, old, new in prep.attrs:
            d = mod.__dict__
            if type(mod).__setattr__ is _MODULE_SETATTR and attr in d:
                d[attr] = new  # a plain attribute: what nn.Module.__setattr__ would do
            else:
                setattr(mod, attr, new)
            done_attrs.append((mod, attr, old))
        new_hist = list(hist) if had_hist else []
        new_hist.append(prep.record)
        object.__setattr__(model, HISTORY_ATTR, new_hist)
    except BaseException:
        if job is not None:
            job.undo()
        for mod, attr, old in reversed(done_attrs):
            setattr(mod, attr, old)
        if had_hist:
            object.__setattr__(model, HISTORY_ATTR, hist)
        elif HISTORY_ATTR in model.__dict__:
            object.__delattr__(model, HISTORY_ATTR)
        raise
    del job  # the old storages go now (unless something else holds them)
    if accs:
        names = list(dict.fromkeys(t["name"] for t in prep.record["tensors"]))
        _guard_stale_graphs(model, accs, names)


def apply_plan(model: nn.Module, plan: Plan, optimizer: Optional[torch.optim.Optimizer] = None,
               *, backup: bool = True, zero_copy: bool = False) -> Dict[str, Any]:
    """Remove the channels ``plan`` drops from ``model``; return the record.

    Args:
        model: the model the plan's graph was built from; changed in place (its
            parameters, buffers and modules stay the same objects).
        plan: a :class:`~pyprune.plan.Plan` of that graph.
        optimizer: its per-parameter state tensors shaped like the parameter
            (momentum buffers, Adam moments, ``max_exp_avg_sq``) are pruned along
            with it, as is every ``.grad``, so training continues; scalar state
            (``step``) is left as it is.
        backup: with ``zero_copy=True``, save beforehand what the in-place
            compaction overwrites, so that a failure once it has started still
            leaves the data as it was (``False`` restores storages, shapes,
            strides and attributes only).  The default copies the kept values
            out of place and overwrites nothing, so it needs no backup.
        zero_copy: compact every tensor in its own storage, which keeps its dense
            capacity (no new memory, and what :func:`pyprune.ops.select_channels_`
            does); by default each pruned tensor gets a new storage holding exactly
            its values, and the old storages are freed on return (unless something
            else still holds them: a graph recorded before, a view).  Extra memory
            while it runs: the pruned size of the tensors it touches.

    See the module docstring for what a training loop, ``torch.compile``, DDP and
    EMA copies of the model need to know.  Validation failures never change
    anything; a failure after that puts everything back (see ``backup``).
    """
    if not isinstance(backup, bool):
        raise TypeError(f"backup must be a bool, got {type(backup).__name__} {backup!r}")
    if not isinstance(zero_copy, bool):
        raise TypeError(f"zero_copy must be a bool, got {type(zero_copy).__name__} {zero_copy!r}")
    prep = _prepare(model, plan, optimizer)
    _commit(model, prep, backup, zero_copy)
    return prep.record


def replay(model: nn.Module, records: Sequence[Dict[str, Any]], *, backup: bool = True,
           zero_copy: bool = False) -> None:
    """Re-apply surgery records (from ``model._pyprune_history`` of a pruned model) to
    a dense model built by the same constructor (or to a copy of the model taken
    before the surgery, such as an EMA copy).  ``backup`` and ``zero_copy`` as for
    :func:`apply_plan`; by default the result holds only the pruned values."""
    if not isinstance(backup, bool):
        raise TypeError(f"backup must be a bool, got {type(backup).__name__} {backup!r}")
    if not isinstance(zero_copy, bool):
        raise TypeError(f"zero_copy must be a bool, got {type(zero_copy).__name__} {zero_copy!r}")
    look = _Lookup(model)
    for i, rec in enumerate(records):
        try:
            tensors = rec["tensors"]
            attr_items = rec["attrs"]
            pairs, keeps, attrs = [], [], []
            for t in tensors:
                ten = look.tensor(str(t["name"]))
                pairs.append((ten, int(t["dim"]), int(t["block"])))
                keeps.append(torch.as_tensor(list(t["keep"]), dtype=torch.int64))
            for a in attr_items:
                mod = look.module(str(a["module"]))
                if not hasattr(mod, str(a["attr"])):
                    raise ValueError(f"module {a['module']!r} has no attribute {a['attr']!r}")
                attrs.append((mod, str(a["attr"]), getattr(mod, str(a["attr"])),
                              _attr_value(a["value"])))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"surgery record {i} is malformed or does not fit this model: "
                             f"{type(e).__name__}: {e}") from e
        prep = _Prepared(pairs, keeps, attrs, {"tensors": list(tensors), "attrs": list(attr_items)})
        _commit(model, prep, backup, zero_copy)
