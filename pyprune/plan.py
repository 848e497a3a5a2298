"""Pruning plans: which channels of each group to keep.

A plan is computed from a :class:`~pyprune.graph.DependencyGraph`, per-channel scores
(``{producer module name: one score per output channel}``, any tensor-like of any
dtype or device) and a :class:`PlanConfig`.  Channels coupled in one group are scored
together (``reduce``: sum of the members' scores by default) and the highest-scored
ones are kept.  Planning never changes the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from .graph import DependencyGraph, Group

if TYPE_CHECKING:  # pragma: no cover
    from .budget import Budget

__all__ = ["PlanConfig", "Plan", "make_plan", "group_scores", "REDUCE_CHOICES", "NORMALIZE_CHOICES"]

#: The accepted values of ``reduce`` and ``normalize`` (also checked by :func:`pyprune.prune`).
REDUCE_CHOICES = ("sum", "mean", "max")
NORMALIZE_CHOICES = (None, "mean", "max", "sum")


@dataclass
class PlanConfig:
    """How many channels to keep.

    ratio:        fraction of the channels of every prunable group to remove.
    layer_ratios: ``{module name: ratio}`` overriding ``ratio`` for the group holding
                  that module's output channels.
    global_ratio: if set, remove this fraction of all prunable channels, choosing the
                  lowest-scored channels across groups (``ratio`` is then unused; groups
                  named in ``layer_ratios`` keep their own ratio).
    normalize:    for ``global_ratio``: divide each group's scores by their
                  ``"mean"``, ``"max"`` or ``"sum"`` first (``None``: raw scores).
    min_channels: never keep fewer channels than this in any layer (default 1: no
                  layer ever becomes zero-width).
    round_to:     keep counts are multiples of this (rounded up, capped at the group's
                  size; best effort where ``min_channels`` forces extra channels).
    ignore:       modules or qualified names whose output channels are never pruned
                  (their whole group is kept).  Model outputs are always kept.
    reduce:       how the scores of coupled channels combine: ``"sum"``, ``"mean"``
                  or ``"max"``.
    """

    ratio: float = 0.5
    layer_ratios: Mapping[str, float] = field(default_factory=dict)
    global_ratio: Optional[float] = None
    normalize: Optional[str] = None
    min_channels: int = 1
    round_to: int = 1
    ignore: Sequence[Union[str, nn.Module]] = ()
    reduce: str = "sum"

    def __post_init__(self) -> None:
        def check_ratio(what: str, r: Any) -> None:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
                raise ValueError(f"{what} must be a number in [0, 1), got {r!r}")

        check_ratio("ratio", self.ratio)
        if self.global_ratio is not None:
            check_ratio("global_ratio", self.global_ratio)
        for k, v in dict(self.layer_ratios).items():
            check_ratio(f"layer_ratios[{k!r}]", v)
        if isinstance(self.min_channels, bool) or not isinstance(self.min_channels, int) \
                or self.min_channels < 1:
            raise ValueError(f"min_channels must be an int >= 1, got {self.min_channels!r}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) \
                or self.round_to < 1:
            raise ValueError(f"round_to must be an int >= 1, got {self.round_to!r}")
        if self.reduce not in REDUCE_CHOICES:
            raise ValueError(f"reduce must be one of {REDUCE_CHOICES}, got {self.reduce!r}")
        if self.normalize not in NORMALIZE_CHOICES:
            raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES}, got {self.normalize!r}")
        if isinstance(self.ignore, (str, nn.Module)):
            self.ignore = (self.ignore,)

    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in fields(cls)]


@dataclass
class Plan:
    """Keep-indices (sorted, unique, int64) per pruned group, into ``0 .. group.size-1``.

    Groups absent from ``keep`` are left whole.  ``skipped`` says why a prunable
    group was left whole (ignored, no scores).  ``budget`` (plain data) describes a
    budget search: ``kind``, ``target``, ``achieved`` (fractions of the dense model),
    ``met``, ``reachable_min``, ``mode``, ``normalize``, ``evaluations``.
    """

    keep: Dict[int, torch.Tensor]
    graph: DependencyGraph
    skipped: Dict[int, str] = field(default_factory=dict)
    budget: Optional[Dict[str, Any]] = None

    @property
    def num_removed(self) -> int:
        return sum(self.graph.groups[g].size - int(k.numel()) for g, k in self.keep.items())

    def kept_mask(self) -> torch.Tensor:
        """Bool mask over all flat channels of the graph: True where kept."""
        mask = torch.ones(self.graph.num_channels, dtype=torch.bool)
        for gid, k in self.keep.items():
            g = self.graph.groups[gid]
            mask[g.offset:g.offset + g.size] = False
            mask[g.offset + k] = True
        return mask

    def summary(self) -> str:
        lines = []
        for gid, k in sorted(self.keep.items()):
            g = self.graph.groups[gid]
            lines.append(f"group {gid}: keep {k.numel()}/{g.size} "
                         f"({', '.join(g.producers[:3])}{'...' if len(g.producers) > 3 else ''})")
        return "\n".join(lines)


def group_scores(graph: DependencyGraph, scores: Mapping[str, Any],
                 reduce: str = "sum") -> torch.Tensor:
    """One float64 score per flat channel of ``graph``; NaN where no score was given."""
    if reduce not in REDUCE_CHOICES:
        raise ValueError(f"reduce must be one of {REDUCE_CHOICES}, got {reduce!r}")
    # Fast path: every layer's scores a float32/float64 CPU tensor of the right length,
    # gathered into one array and accumulated with one op (the layers' order is kept,
    # so every channel sums its members' scores in the same order as one op per layer
    # would).
    # Anything else, any error and any non-finite score take the per-layer path, which
    # raises the error of the first bad layer.
    out_maps = graph.out_maps
    parts: List[np.ndarray] = []
    names: List[str] = []
    for name, s in scores.items():
        if name not in out_maps:
            continue
        if not isinstance(s, torch.Tensor) or not s.is_cpu or \
                s.dtype not in (torch.float32, torch.float64) or s.is_neg():
            return _group_scores_checked(graph, scores, reduce)
        el, block = out_maps[name]
        if s.numel() != len(el) * block:
            return _group_scores_checked(graph, scores, reduce)
        parts.append((s.detach() if s.requires_grad else s).numpy().reshape(-1))
        names.append(name)
    n = graph.num_channels
    total = np.zeros(n, dtype=np.float64)
    if not parts:
        total[:] = math.nan
        return torch.from_numpy(total)
    vals = np.concatenate(parts).astype(np.float64, copy=False)
    if not np.isfinite(vals).all():
        return _group_scores_checked(graph, scores, reduce)
    idx = _score_index(graph, names)
    count = np.bincount(idx, minlength=n)
    if reduce == "max":
        total.fill(-math.inf)
        np.maximum.at(total, idx, vals)
    else:
        total += np.bincount(idx, weights=vals, minlength=n)  # in order, as index_add_
        if reduce == "mean":
            total /= np.maximum(count, 1)
    total[count == 0] = math.nan
    return torch.from_numpy(total)


def _score_index(graph: DependencyGraph, names: List[str]) -> np.ndarray:
    """Flat channel index of every score of the layers ``names`` (concatenated in that
    order; index j of a layer is its channel j // block), cached per graph and order."""
    cache = graph.__dict__.setdefault("_pyprune_score_index", {})
    key = tuple(names)
    idx = cache.get(key)
    if idx is None:
        out_maps, out_flat, slices = graph.out_maps, graph._out_flat, graph._out_slices
        parts = []
        blocks: List[Tuple[int, int]] = []  # (channels, block) per layer
        for name in names:
            a, b = slices[name]
            parts.append(out_flat[a:b])
            blocks.append((b - a, out_maps[name][1]))
        idx = np.concatenate(parts)
        if any(b != 1 for _, b in blocks):
            lens, bs = zip(*blocks)
            idx = np.repeat(idx, np.repeat(np.array(bs), lens))
        cache[key] = idx
    return idx


def _group_scores_checked(graph: DependencyGraph, scores: Mapping[str, Any],
                          reduce: str) -> torch.Tensor:
    """The per-layer reference of :func:`group_scores`: validates and accumulates one
    layer at a time, so it raises the error of the first bad layer."""
    n = graph.num_channels
    total = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    if reduce == "max":
        total.fill_(-math.inf)
    for name, s in scores.items():
        if name not in graph.out_maps:
            continue  # a layer whose outputs are not traced channels (opaque, say)
        s = torch.as_tensor(s).detach()
        if s.is_complex() or s.dtype == torch.bool:
            raise TypeError(f"scores[{name!r}] must be real numbers, got dtype {s.dtype}")
        s = s.to(device="cpu", dtype=torch.float64).reshape(-1)
        idx = graph.out_index(name)
        if s.numel() != idx.numel():
            raise ValueError(f"scores[{name!r}] has {s.numel()} entries but {name} has "
                             f"{idx.numel()} output channels")
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"scores[{name!r}] contains NaN or infinite values")
        if reduce == "max":
            total.scatter_reduce_(0, idx, s, reduce="amax")
        else:
            total.index_add_(0, idx, s)
        count.index_add_(0, idx, torch.ones_like(s))
    if reduce == "mean":
        total = total / count.clamp_min(1)
    total[count == 0] = math.nan
    return total


def _keep_count(n: int, ratio: float, cfg: PlanConfig) -> int:
    n_keep = n - int(math.floor(ratio * n + 1e-9))
    return _round_count(n_keep, n, cfg)


def _round_count(n_keep: int, n: int, cfg: PlanConfig) -> int:
    n_keep = max(n_keep, cfg.min_channels)
    if cfg.round_to > 1:
        n_keep = int(math.ceil(n_keep / cfg.round_to)) * cfg.round_to
    return max(1, min(n_keep, n))


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores (ties: lower index first), sorted."""
    order = torch.sort(-scores, stable=True).indices
    return torch.sort(order[:k]).values


def _top_groups(graph: DependencyGraph, flat: torch.Tensor,
                sel: List[Tuple[Group, int]]) -> Dict[int, torch.Tensor]:
    """``{group id: _top(group's scores, k)}`` for every (group, k) of ``sel``, in
    ``sel``'s order, with two sorts over all the groups' channels at once: a stable
    sort by score (descending) and a stable sort of that order by group, which is a
    stable per-group sort by score (ties: lower index first, as in :func:`_top`).
    (numpy: these arrays are small, and numpy's per-op cost is a fraction of torch's.)"""
    if len(sel) <= 1:
        return {g.id: _top(flat[g.offset:g.offset + g.size], k) for g, k in sel}
    segs = sorted(sel, key=lambda gk: gk[0].offset)  # segments in channel order
    gsel = np.zeros(len(graph.groups), dtype=bool)
    gsel[[g.id for g, _ in segs]] = True
    pos = np.flatnonzero(gsel[graph.channel_group.numpy()])  # their channels, ascending
    sizes = np.array([g.size for g, _ in segs], dtype=np.int64)
    ks = np.array([k for _, k in segs], dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    seg = np.repeat(np.arange(len(segs), dtype=np.int64), sizes)
    start_of = starts[seg]
    by_score = np.argsort(-flat.numpy()[pos], kind="stable")
    order = by_score[np.argsort(seg[by_score], kind="stable")]
    rank = np.arange(pos.size, dtype=np.int64) - start_of
    kept = np.zeros(pos.size, dtype=bool)
    kept[order[rank < ks[seg]]] = True
    where = np.flatnonzero(kept)
    local = where - start_of[where]
    bounds = np.cumsum(ks).tolist()
    out = {g.id: torch.from_numpy(local[b - k:b].copy()) for (g, k), b in zip(segs, bounds)}
    return {g.id: out[g.id] for g, _ in sel}


def _layouts(graph: DependencyGraph) -> Tuple[List[Tuple[int, ...]], List[int], torch.Tensor]:
    """The distinct channel layouts of the graph's members (tensor members, then
    attribute members; one per distinct ``elems``): ``(layouts, layout of each member,
    flat channel index of every layout's channels, concatenated)``, computed when the
    graph is built (a graph's members never change)."""
    return graph._member_layouts


def _kept_mask(graph: DependencyGraph, keep: Dict[int, torch.Tensor]) -> torch.Tensor:
    """Bool mask over all flat channels: False where ``keep`` (checked) drops a channel."""
    mask = np.ones(graph.num_channels, dtype=bool)
    if keep:
        gids = list(keep)
        gsel = np.zeros(len(graph.groups), dtype=bool)
        gsel[gids] = True
        mask[gsel[graph.channel_group.numpy()]] = False
        ks = [k.numpy() for k in keep.values()]
        offs = np.array([graph.groups[g].offset for g in gids], dtype=np.int64)
        mask[np.concatenate(ks) + np.repeat(offs, [k.size for k in ks])] = True
    return torch.from_numpy(mask)


def _short(graph: DependencyGraph, idx: torch.Tensor, lens: List[int], mask: torch.Tensor,
           keep: Dict[int, torch.Tensor], min_channels: int) -> List[int]:
    """Keys ``layout * n_groups + group`` of every (layout, pruned group) pair whose
    layout keeps fewer than ``min(min_channels, its channels of the group)``, counted for
    all pairs at once; ``idx``: the layouts' flat channel indices, concatenated, ``lens``
    their lengths, ``mask``: :func:`_kept_mask`."""
    n_groups = len(graph.groups)
    pruned = np.zeros(n_groups, dtype=bool)
    pruned[list(keep)] = True
    idx_np = idx.numpy()
    seg = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
    key = seg * n_groups + graph.channel_group.numpy()[idx_np]
    size = len(lens) * n_groups
    total = np.bincount(key, minlength=size)
    kept = np.bincount(key[mask.numpy()[idx_np]], minlength=size)
    bad = (kept < np.minimum(total, min_channels)) & np.tile(pruned, len(lens))
    return np.flatnonzero(bad).tolist()


def _repair(graph: DependencyGraph, keep: Dict[int, torch.Tensor], flat: torch.Tensor,
            cfg: PlanConfig) -> None:
    """Make every layer keep at least ``min_channels`` channels of each pruned group
    (one count over all member layouts finds the layers short of them: usually none)."""
    layouts, _, idx = _layouts(graph)
    if not layouts:
        return
    lens = [len(t) for t in layouts]
    n_groups = len(graph.groups)
    mask = _kept_mask(graph, keep)
    bad = _short(graph, idx, lens, mask, keep, cfg.min_channels)
    if not bad:
        return
    maps = torch.split(idx, lens)
    changed = set()
    for k in bad:
        mid, gid = divmod(k, n_groups)
        m = maps[mid]
        seg_idx = torch.unique(m[graph.channel_group[m] == gid])
        have = int(mask[seg_idx].sum())
        want = min(cfg.min_channels, int(seg_idx.numel()))
        if have >= want:  # an earlier repair in this loop already added channels
            continue
        cand = seg_idx[~mask[seg_idx]]
        mask[cand[_top(flat[cand], want - have)]] = True
        changed.add(gid)
    for gid in changed:
        g = graph.groups[gid]
        keep[gid] = mask[g.offset:g.offset + g.size].nonzero().flatten()


def _resolve_ignored(graph: DependencyGraph, ignore: Sequence[Union[str, nn.Module]]) -> set:
    gids = set()
    for item in ignore:
        name = graph._name_of(item)
        try:
            graph._model_ref.get_submodule(name)
        except AttributeError:
            raise ValueError(f"ignore: {name!r} is not a module of the model") from None
        gids.update(g.id for g in graph.groups_of(name))
    return gids


def make_plan(graph: DependencyGraph, scores: Mapping[str, Any],
              config: Optional[PlanConfig] = None, *, budget: Optional["Budget"] = None,
              budget_mode: str = "global", **overrides: Any) -> Plan:
    """Keep-indices per group from per-channel ``scores`` (see :class:`PlanConfig`).

    ``overrides`` are :class:`PlanConfig` fields, e.g. ``make_plan(g, s, ratio=0.3)``.

    ``budget`` (a :class:`pyprune.budget.Budget`): instead of ``ratio``, remove channels
    of every prunable group not named in ``layer_ratios`` until the model keeps
    ``budget.target`` of its FLOPs or parameters (within :data:`pyprune.budget.TOLERANCE`,
    else a :class:`ValueError` naming the closest reachable value, or ``plan.budget["met"]``
    False when ``round_to`` steps are too coarse).  ``budget_mode``:

    * ``"global"`` (default): channels are removed lowest score first across all groups,
      each group's scores divided by their ``config.normalize`` statistic (``"mean"``,
      ``"max"``, ``"sum"``, or raw scores for ``None``): one global threshold, so the
      criterion decides how wide each layer stays;
    * ``"uniform"``: every group removes the same fraction of its channels, to within
      one channel (groups take turns in the order of ``(j + 1) / size``, where a group's
      ``j``-th removal falls), so any budget is reached at one-channel granularity.

    Either way a group keeps at least ``min_channels`` channels per layer; ``round_to``
    applies to the keep counts.
    """
    if budget_mode not in ("global", "uniform"):
        raise ValueError(f"budget_mode must be 'global' or 'uniform', got {budget_mode!r}")
    if config is None:
        config = PlanConfig(**overrides)
    elif overrides:
        kw = {f: getattr(config, f) for f in PlanConfig.field_names()}
        kw.update(overrides)
        config = PlanConfig(**kw)
    if budget is not None and config.global_ratio is not None:
        raise ValueError("give a budget (flops= / params=) or global_ratio, not both; "
                         f"got global_ratio={config.global_ratio!r}")
    flat = group_scores(graph, scores, config.reduce)
    ignored = _resolve_ignored(graph, config.ignore)
    layer_ratio: Dict[int, float] = {}
    for name, r in dict(config.layer_ratios).items():
        if name not in graph.out_maps:
            raise ValueError(f"layer_ratios: {name!r} does not produce traced channels")
        for g in graph.groups_of(name):
            if g.id in layer_ratio and layer_ratio[g.id] != r:
                raise ValueError(f"layer_ratios: conflicting ratios {layer_ratio[g.id]} and {r} "
                                 f"for group {g.id} (coupled layers {g.producers})")
            layer_ratio[g.id] = r
    keep: Dict[int, torch.Tensor] = {}
    skipped: Dict[int, str] = {}
    global_pool: List[Group] = []
    top: List[Tuple[Group, int]] = []
    unscored = set(graph.channel_group.numpy()[np.isnan(flat.numpy())].tolist())
    for g in graph.groups:
        if not g.prunable:
            continue
        if g.id in ignored:
            skipped[g.id] = "ignored"
            continue
        if g.id in unscored:
            skipped[g.id] = "no scores for some of its channels"
            continue
        if (config.global_ratio is not None or budget is not None) and g.id not in layer_ratio:
            global_pool.append(g)
            continue
        r = layer_ratio.get(g.id, config.ratio)
        k = _keep_count(g.size, r, config)
        if k < g.size:
            top.append((g, k))
    keep.update(_top_groups(graph, flat, top))
    budget_info: Optional[Dict[str, Any]] = None
    if budget is not None:
        limits = _limits(graph, config, skipped, layer_ratio)
        keep, budget_info = _budget_plan(graph, global_pool, flat, config, keep, budget,
                                         budget_mode, limits)
    elif global_pool:
        keep.update(_global(graph, global_pool, flat, config))
    if keep:
        _repair(graph, keep, flat, config)
    for gid in list(keep):
        if keep[gid].numel() >= graph.groups[gid].size:
            del keep[gid]
    return Plan(keep, graph, skipped, budget_info)


def _limits(graph: DependencyGraph, cfg: PlanConfig, skipped: Dict[int, str],
            layer_ratio: Dict[int, float]) -> str:
    """What keeps a budget search from removing more (for its error message)."""
    parts = [f"min_channels={cfg.min_channels}"]
    if cfg.round_to > 1:
        parts.append(f"round_to={cfg.round_to}")
    n_ign = sum(1 for r in skipped.values() if r == "ignored")
    if n_ign:
        parts.append(f"{n_ign} ignored group(s)")
    if len(skipped) > n_ign:
        parts.append(f"{len(skipped) - n_ign} group(s) without scores")
    whole = [g for g in graph.groups if not g.prunable and g.size > 0]
    if whole:
        parts.append(f"{len(whole)} group(s) ({sum(g.size for g in whole)} channels) the graph "
                     "keeps whole (model outputs, coupling it cannot prune; see graph.explain())")
    if layer_ratio:
        parts.append(f"{len(layer_ratio)} group(s) fixed by layer_ratios")
    return ", ".join(parts)


def _budget_plan(graph: DependencyGraph, pool: List[Group], flat: torch.Tensor,
                 cfg: PlanConfig, fixed: Dict[int, torch.Tensor], budget: "Budget",
                 mode: str, limits: str) -> Tuple[Dict[int, torch.Tensor], Dict[str, Any]]:
    """Keep-indices of every group (``fixed`` ones as given) meeting ``budget``, with the
    groups of ``pool`` pruned in one removal order (see :func:`make_plan`)."""
    from .budget import search  # plan -> budget: the cost model and the bisection

    sizes = np.array([g.size for g in pool], dtype=np.int64)
    floors = np.minimum(np.maximum(cfg.min_channels, 1), sizes)
    offsets = np.array([g.offset for g in pool], dtype=np.int64)
    scores = flat.numpy()
    chan = np.concatenate([np.arange(o, o + n) for o, n in zip(offsets, sizes)]) \
        if pool else np.zeros(0, np.int64)  # the pool's flat channels, group after group
    owner = np.repeat(np.arange(len(pool), dtype=np.int64), sizes)
    starts = np.cumsum(sizes) - sizes
    # removal rank of each channel within its group: 0 = removed first.  Channels are
    # kept highest score first, ties to the lower index (as _top), so removed in the
    # reverse of that order.
    s_pool = scores[chan]
    by_keep = np.lexsort((chan, -s_pool, owner))  # per group: kept-first order
    removal_rank = np.empty(chan.size, dtype=np.int64)
    removal_rank[by_keep] = sizes[owner] - 1 - (np.arange(chan.size) - starts[owner])
    eligible = removal_rank < (sizes - floors)[owner]
    if mode == "global":
        norm = s_pool.copy()
        if cfg.normalize is not None:
            absd = np.abs(s_pool)
            if cfg.normalize == "mean":
                d = np.bincount(owner, weights=absd, minlength=len(pool)) / np.maximum(sizes, 1)
            elif cfg.normalize == "sum":
                d = np.bincount(owner, weights=absd, minlength=len(pool))
            else:
                d = np.zeros(len(pool))
                np.maximum.at(d, owner, absd)
            d = np.where(d > 0, d, 1.0)
            norm = s_pool / d[owner]
        el = np.flatnonzero(eligible)
        # lowest normalized score first; within a group the removal rank decides, and
        # equal scores across groups (untrained BatchNorm scales, say) are removed as
        # the same fraction of each group, as in the uniform order
        frac = (removal_rank[el] + 1) / sizes[owner[el]]
        order = el[np.lexsort((owner[el], frac, norm[el]))]
        event_group = owner[order]
    else:
        n_ev = sizes - floors
        ev_owner = np.repeat(np.arange(len(pool), dtype=np.int64), n_ev)
        ev_j = np.arange(int(n_ev.sum()), dtype=np.int64) - np.repeat(np.cumsum(n_ev) - n_ev, n_ev)
        key = (ev_j + 1) / sizes[ev_owner]
        event_group = ev_owner[np.lexsort((ev_owner, key))]
    n_steps = int(event_group.size)
    base = _kept_mask(graph, fixed).numpy()
    pool_gids = [g.id for g in pool]
    layouts, _, lidx = _layouts(graph)
    lens = [len(t) for t in layouts]

    def build(removed: np.ndarray) -> np.ndarray:
        n_keep = sizes - removed
        if cfg.round_to > 1:
            n_keep = np.minimum(sizes, -(-n_keep // cfg.round_to) * cfg.round_to)
        mask = base.copy()
        mask[chan[removal_rank < (sizes - n_keep)[owner]]] = False
        pruned = [gid for gid, r in zip(pool_gids, (sizes - n_keep).tolist()) if r > 0]
        pruned += list(fixed)
        if layouts and pruned and _short(graph, lidx, lens, torch.from_numpy(mask),
                                         dict.fromkeys(pruned), cfg.min_channels):
            keep = _keep_from_mask(graph, mask, pruned)
            _repair(graph, keep, flat, cfg)
            mask = _kept_mask(graph, keep).numpy()
        return mask

    res = search(event_group, len(pool), build, budget, limits)
    touched = set(pool_gids) | set(fixed)
    keep = _keep_from_mask(graph, res.mask, [gid for gid in touched
                                              if not res.mask[graph.groups[gid].offset:
                                                              graph.groups[gid].offset
                                                              + graph.groups[gid].size].all()])
    info = {"kind": budget.kind, "target": float(budget.target), "achieved": res.achieved,
            "met": res.met, "reachable_min": res.reachable_min, "mode": mode,
            "normalize": cfg.normalize if mode == "global" else None,
            "evaluations": res.evaluations, "removed_in_order": res.k, "order_length": n_steps}
    return keep, info


def _keep_from_mask(graph: DependencyGraph, mask: np.ndarray,
                    gids: Sequence[int]) -> Dict[int, torch.Tensor]:
    """``{group id: kept local indices}`` of the groups ``gids`` under a flat kept mask."""
    out: Dict[int, torch.Tensor] = {}
    for gid in gids:
        g = graph.groups[gid]
        out[gid] = torch.from_numpy(np.flatnonzero(mask[g.offset:g.offset + g.size]))
    return out


def _global(graph: DependencyGraph, groups: List[Group], flat: torch.Tensor,
            cfg: PlanConfig) -> Dict[int, torch.Tensor]:
    parts, owner = [], []
    for g in groups:
        s = flat[g.offset:g.offset + g.size].clone()
        if cfg.normalize is not None:
            d = {"mean": s.abs().mean(), "max": s.abs().max(), "sum": s.abs().sum()}[cfg.normalize]
            s = s / d if float(d) > 0 else s
        parts.append(s)
        owner.append(torch.full((g.size,), g.id, dtype=torch.int64))
    allscores = torch.cat(parts)
    allowner = torch.cat(owner)
    local = torch.cat([torch.arange(g.size) for g in groups])
    total = int(allscores.numel())
    target = int(math.floor(cfg.global_ratio * total + 1e-9))
    remaining = {g.id: g.size for g in groups}
    floor = {g.id: max(1, min(cfg.min_channels, g.size)) for g in groups}
    removed = torch.zeros(total, dtype=torch.bool)
    n_removed = 0
    for i in torch.sort(allscores, stable=True).indices.tolist():
        if n_removed >= target:
            break
        gid = int(allowner[i])
        if remaining[gid] > floor[gid]:
            remaining[gid] -= 1
            removed[i] = True
            n_removed += 1
    out: Dict[int, torch.Tensor] = {}
    for g in groups:
        sel = allowner == g.id
        n_keep = _round_count(remaining[g.id], g.size, cfg)
        if n_keep < g.size:
            s = flat[g.offset:g.offset + g.size]
            if n_keep == remaining[g.id]:
                out[g.id] = torch.sort(local[sel][~removed[sel]]).values
            else:
                out[g.id] = _top(s, n_keep)
    return out
