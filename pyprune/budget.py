"""FLOPs and parameter budgets: analytic counts of a candidate plan, and the search.

``pyprune.prune(..., flops=0.5)`` keeps 50% of the model's FLOPs and ``params=0.3``
30% of its parameters, both as counted by :func:`pyprune.profile` on the model given
to ``prune`` (so a second ``prune`` of a pruned model takes fractions of the pruned
model).  Planning with a budget never runs surgery on a trial: a :class:`CostModel`
gives the parameter and FLOP count of any kept-channel mask from the graph's members
and one dense profile:

* every parameter that is a graph member has, along each member dim, ``block x (kept
  channels of that member's layout)`` entries, and its dense size along other dims;
  ``params`` is the sum over the model's parameters (each once);
* every layer with MACs in the dense profile (conv, linear, transposed conv) has MACs
  proportional to its weight's number of elements (the spatial size and the number of
  calls do not change when channels are removed), so its pruned MACs are
  ``dense MACs x pruned weight numel / dense weight numel``; other layers keep their
  dense MACs.  FLOPs are ``2 x MACs`` as in :func:`pyprune.profile`.

The search (:func:`search`) walks one *removal order* of channels (see
:func:`pyprune.plan.make_plan`): the first ``k`` channels of the order are removed
(then ``round_to`` and ``min_channels`` are applied), and the count is monotone in
``k``, so a bisection over ``k`` finds the plan closest to the target at one-channel
granularity in ``log2(channels)`` evaluations of the cost model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from .graph import DependencyGraph
from .profile import Profile

__all__ = ["CostModel", "Budget", "BudgetResult", "search", "TOLERANCE", "KINDS", "MODES"]

#: A budget is met when ``|achieved / target - 1| <= TOLERANCE``.
TOLERANCE = 0.01
#: What a budget can target.
KINDS = ("flops", "params")
#: How the budget search orders channels: ``"global"`` (one threshold over normalized
#: scores of all groups) or ``"uniform"`` (every group the same fraction, within one channel).
MODES = ("global", "uniform")


class CostModel:
    """Parameters and FLOPs of ``model`` as a function of the kept channels of ``graph``.

    ``dense`` is :func:`pyprune.profile` of the unpruned ``model`` (on the same inputs
    the graph was traced with).  :meth:`evaluate` takes a bool mask over the graph's
    flat channels (True: kept) and returns ``(params, flops)`` exactly as
    :func:`pyprune.profile` would count them on the model pruned to that mask.
    """

    def __init__(self, graph: DependencyGraph, model: nn.Module, dense: Profile) -> None:
        self.dense_params = int(dense.params)
        self.dense_flops = int(dense.flops)
        maps = graph.channel_maps
        lens = np.array([int(m.numel()) for m in maps], dtype=np.int64)
        self._idx = (torch.cat(list(maps)).numpy() if maps else np.zeros(0, np.int64))
        self._seg = np.repeat(np.arange(len(maps), dtype=np.int64), lens)
        self._n_layouts = len(maps)
        members: Dict[str, List[Tuple[int, int, int]]] = {}  # tensor -> (dim, layout, block)
        for m in graph.tensor_members:
            members.setdefault(m.name, []).append((m.dim, graph.map_id(m), m.block))
        macs_of: Dict[str, int] = {}
        for layer in dense.layers:
            if layer.macs:
                macs_of[layer.name] = macs_of.get(layer.name, 0) + int(layer.macs)
        params = dict(model.named_parameters())  # canonical names, each parameter once
        const_params = 0
        const_macs = 0.0
        rows: List[Tuple[float, float, List[Tuple[int, int]]]] = []  # (p weight, macs/numel, dims)
        weight_of_layer = {f"{name}.weight": name for name in macs_of}
        claimed = set()
        for name, p in params.items():
            layer = weight_of_layer.get(name)
            mac_factor = 0.0
            if layer is not None and p.numel() > 0:
                mac_factor = macs_of[layer] / p.numel()
                claimed.add(layer)
            dims = members.get(name)
            if not dims:
                const_params += p.numel()
                const_macs += mac_factor * p.numel()
                continue
            fixed = 1
            var: List[Tuple[int, int]] = []
            member_dims = {d for d, _, _ in dims}
            for d, size in enumerate(p.shape):
                if d not in member_dims:
                    fixed *= int(size)
            for d, lid, block in dims:
                if d < p.dim():
                    var.append((lid, block))
            rows.append((float(fixed), mac_factor, var))
        for layer, macs in macs_of.items():
            if layer not in claimed:  # MACs not tied to a weight named "<layer>.weight"
                const_macs += macs
        width = max((len(v) for _, _, v in rows), default=0)
        # padded (tensor x member dim) tables; padding uses a virtual layout of count 1
        self._lid = np.full((len(rows), max(width, 1)), self._n_layouts, dtype=np.int64)
        self._block = np.ones((len(rows), max(width, 1)), dtype=np.float64)
        for i, (_, _, var) in enumerate(rows):
            for j, (lid, block) in enumerate(var):
                self._lid[i, j] = lid
                self._block[i, j] = block
        self._fixed = np.array([r[0] for r in rows], dtype=np.float64)
        self._mac_factor = np.array([r[1] for r in rows], dtype=np.float64)
        self._const_params = const_params
        self._const_macs = const_macs

    def evaluate(self, mask: Any) -> Tuple[int, int]:
        """``(params, flops)`` of the model pruned to ``mask`` (bool, one per flat channel)."""
        m = np.asarray(mask.numpy() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
        counts = np.bincount(self._seg[m[self._idx]], minlength=self._n_layouts)
        counts = np.append(counts.astype(np.float64), 1.0)  # the padding layout
        numel = self._fixed * np.prod(counts[self._lid] * self._block, axis=1)
        params = self._const_params + float(numel.sum())
        macs = self._const_macs + float((numel * self._mac_factor).sum())
        return int(round(params)), 2 * int(round(macs))

    def fractions(self, mask: Any) -> Dict[str, float]:
        """``{"params": kept fraction, "flops": kept fraction}`` for ``mask``."""
        p, f = self.evaluate(mask)
        return {"params": p / self.dense_params if self.dense_params else 1.0,
                "flops": f / self.dense_flops if self.dense_flops else 1.0}


@dataclass
class Budget:
    """A target fraction of the dense FLOPs or parameters (``kind`` one of :data:`KINDS`)."""

    kind: str
    target: float
    cost: CostModel

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"budget kind must be one of {KINDS}, got {self.kind!r}")
        if isinstance(self.target, bool) or not isinstance(self.target, (int, float)) \
                or not 0.0 < float(self.target) <= 1.0:
            raise ValueError(f"{self.kind} must be a number in (0, 1], got {self.target!r}")
        if self.kind == "flops" and self.cost.dense_flops == 0:
            raise ValueError("flops: the model has no FLOPs that pyprune.profile counts "
                             "(no conv / linear module calls), so a FLOPs budget cannot apply")

    def value(self, mask: Any) -> float:
        return self.cost.fractions(mask)[self.kind]


@dataclass
class BudgetResult:
    """What the search found: ``removed`` channels per group (in the order's groups),
    the kept mask, the achieved fraction, the smallest reachable fraction (every
    channel of the order removed) and the number of cost-model evaluations."""

    removed: np.ndarray
    mask: np.ndarray
    achieved: float
    target: float
    reachable_min: float
    evaluations: int
    k: int

    @property
    def met(self) -> bool:
        return abs(self.achieved / self.target - 1.0) <= TOLERANCE


#: At most this many events are tried one by one after the bisection (see :func:`search`).
MAX_REFINE = 4096


def search(event_group: np.ndarray, n_groups: int,
           build: Callable[[np.ndarray], np.ndarray], budget: Budget,
           limits: str = "") -> BudgetResult:
    """The plan closest to ``budget.target`` along one removal order.

    ``event_group[i]`` is the group (``0 .. n_groups-1``) whose next channel the
    ``i``-th step of the order removes; ``build(removed)`` turns channels removed per
    group into a kept mask (applying ``round_to`` and ``min_channels``) and must keep
    fewer channels as ``removed`` grows.  First a bisection over the length ``k`` of
    the order's prefix brackets the target between two neighbouring prefixes; when
    neither is within :data:`TOLERANCE` (one channel of a group coupled across many
    layers, a residual stream, can weigh more than 1%), the steps after the bracket are
    tried one by one from its upper side, each kept unless it would undershoot the
    target by more than a quarter of the tolerance, then by more than the tolerance
    (a step refused blocks its group's further steps); the closest plan found wins.
    This also runs when the bisection's plan is more than a quarter of the tolerance
    off, so results are usually well inside it.

    Raises ValueError naming the closest reachable value when even the whole order
    keeps more than ``target * (1 + TOLERANCE)`` (``limits`` says what limits pruning).
    """
    evals = 0
    cache: Dict[int, Tuple[np.ndarray, float]] = {}
    target = float(budget.target)
    n_steps = int(event_group.size)

    def counts(k: int) -> np.ndarray:
        return np.bincount(event_group[:k], minlength=n_groups).astype(np.int64)

    def value(removed: np.ndarray) -> Tuple[np.ndarray, float]:
        nonlocal evals
        mask = build(removed)
        evals += 1
        return mask, budget.value(mask)

    def at(k: int) -> Tuple[np.ndarray, float]:
        if k not in cache:
            cache[k] = value(counts(k))
        return cache[k]

    _, lo_val = at(0)
    hi_mask, hi_val = at(n_steps)
    if hi_val > target * (1.0 + TOLERANCE):
        what = "FLOPs" if budget.kind == "flops" else "parameters"
        raise ValueError(
            f"{budget.kind}={target:g} is not reachable: the most pruning allowed keeps "
            f"{hi_val:.6g} of the model's {what} (the closest reachable value is "
            f"{budget.kind}={hi_val:.6g}{'; limited by ' + limits if limits else ''})")
    if lo_val <= target:
        best = 0
    elif hi_val > target:
        best = n_steps
    else:
        lo, hi = 0, n_steps  # invariant: value(lo) > target >= value(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if at(mid)[1] > target:
                lo = mid
            else:
                hi = mid
        # the closer of the two neighbours (ties: the one within the target)
        best = hi if abs(at(hi)[1] - target) <= abs(at(lo)[1] - target) else lo
        if abs(at(best)[1] / target - 1.0) > TOLERANCE / 4:
            # try closer: steps undershooting by at most a quarter of the tolerance,
            # then (if that is not enough) by at most the tolerance; the closest wins
            cands = [(counts(best),) + at(best)]
            for slack in (TOLERANCE / 4, TOLERANCE):
                refined = _refine(event_group, lo, counts(lo), target, target * (1 - slack),
                                  value)
                if refined is not None:
                    cands.append(refined)
                    if abs(refined[2] / target - 1.0) <= TOLERANCE / 4:
                        break
            removed, mask, val = min(cands, key=lambda c: abs(c[2] - target))
            return BudgetResult(removed, mask, val, target, hi_val, evals, best)
    mask, val = at(best)
    return BudgetResult(counts(best), mask, val, target, hi_val, evals, best)


def _refine(event_group: np.ndarray, start: int, removed: np.ndarray, target: float,
            floor: float, value: Callable[[np.ndarray], Tuple[np.ndarray, float]]
            ) -> Optional[Tuple[np.ndarray, np.ndarray, float]]:
    """Steps after ``start`` one by one, each kept unless its value falls below
    ``floor`` (then its group takes no further step), until the value is at most
    ``target`` (see :func:`search`); the state closest to ``target`` found."""
    removed = removed.copy()
    blocked = np.zeros(int(removed.size), dtype=bool)
    best: Optional[Tuple[np.ndarray, np.ndarray, float]] = None
    for g in event_group[start:start + MAX_REFINE].tolist():
        if blocked[g]:
            continue
        removed[g] += 1
        mask, v = value(removed)
        if v < floor:
            removed[g] -= 1
            blocked[g] = True
            continue
        if best is None or abs(v - target) < abs(best[2] - target):
            best = (removed.copy(), mask, v)
        if v <= target:
            break
    return best
