"""Surgery: remove channels physically, atomically.  The only code that mutates models.

:func:`apply_plan` turns a :class:`~pyprune.plan.Plan` into one batched call of
:func:`pyprune.ops.select_channels_` covering every parameter and buffer of the model,
their ``.grad`` and the optimizer's per-parameter state (momentum buffers, Adam moments,
...), then updates the module attributes (``in_channels``, ``num_features``, ``groups``
of depthwise convs, ``in_features`` ...).  Parameters keep their identity, so an
optimizer built before pruning keeps working.

Atomicity: the whole plan is validated and every new value computed before anything
changes.  If the op or an attribute update still fails, every touched tensor is put
back (storage, shape, strides and data) and every attribute restored, then the error is
re-raised.  For the data, ``backup=True`` (the default) copies beforehand the part of
each tensor's storage that in-place compaction overwrites (its first new-numel
elements; a quarter of a conv weight pruned 50% on both sides; on the CPU one native
copy into a buffer the op owns).  The op validates everything before it writes, so
``backup=False`` only gives up the data of a failure that comes once the op has
started writing (inside it, or in an attribute update after it): storages, shapes,
strides and attributes are restored either way.

Each surgery appends a plain-data record to ``model._pyprune_history`` (names, dims,
blocks, keep-indices and new attribute values); :func:`replay` re-applies such records
to a freshly built dense model (used by :func:`pyprune.io.load`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .ops.select import _InPlace
from .graph._core import module_dict
from .plan import Plan, _kept_mask, _layouts

__all__ = ["apply_plan", "replay", "history", "HISTORY_ATTR"]

HISTORY_ATTR = "_pyprune_history"
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
        if old != len(a.elems) * a.block:
            raise ValueError(f"{a.module}.{a.attr} is {old!r} but the graph expects "
                             f"{len(a.elems) * a.block}: the graph is stale, rebuild it")
        new = len(lk[1]) * a.block
        attrs.append((mod, a.attr, old, new))
        attrs_rec.append({"module": a.module, "attr": a.attr, "value": new})
    return _Prepared(pairs, keeps, attrs, {"tensors": tensors_rec, "attrs": attrs_rec})


def _commit(model: nn.Module, prep: _Prepared, backup: bool) -> None:
    # Validated before anything changes; with ``backup`` the compaction first saves
    # what it overwrites (the front of each tensor's storage region), so undo() can put
    # the data back as well as every tensor's storage, shape and strides.
    job = _InPlace("select_channels_", prep.pairs, prep.keeps, None) if prep.pairs else None
    hist = getattr(model, HISTORY_ATTR, None)
    had_hist = hist is not None
    done_attrs: List[Tuple[nn.Module, str, Any]] = []
    try:
        if job is not None:
            with torch.no_grad():
                job.run(backup)
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


def apply_plan(model: nn.Module, plan: Plan, optimizer: Optional[torch.optim.Optimizer] = None,
               *, backup: bool = True) -> Dict[str, Any]:
    """Remove the channels ``plan`` drops from ``model`` in place; return the record.

    ``optimizer``: its per-parameter state tensors shaped like the parameter are pruned
    along with it, as is every ``.grad``, so training continues.  ``backup=False``
    skips the copy of the touched tensors that makes a failure inside the op
    undoable (validation failures never change anything either way).
    """
    prep = _prepare(model, plan, optimizer)
    _commit(model, prep, backup)
    return prep.record


def replay(model: nn.Module, records: Sequence[Dict[str, Any]], *, backup: bool = True) -> None:
    """Re-apply surgery records (from ``model._pyprune_history`` of a pruned model) to
    a dense model built by the same constructor."""
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
                attrs.append((mod, str(a["attr"]), getattr(mod, str(a["attr"])), int(a["value"])))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"surgery record {i} is malformed or does not fit this model: "
                             f"{type(e).__name__}: {e}") from e
        prep = _Prepared(pairs, keeps, attrs, {"tensors": list(tensors), "attrs": list(attr_items)})
        _commit(model, prep, backup)
