"""What a :func:`pyprune.prune` call did: :class:`PruneSummary`.

Every successful ``prune`` stores one summary on the model; read it with
:func:`last_summary` (the latest) or :func:`summaries` (all, oldest first, one per
``prune`` call; :func:`pyprune.save` / :func:`pyprune.load` keep them)::

    pyprune.prune(model, x, "l1", flops=0.5)
    s = pyprune.summary.last_summary(model)
    print(s)                 # readable report
    json.dumps(s.to_dict())  # plain data (str, int, float, bool, None, lists, dicts)

A summary never holds tensors or references to the model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

import torch.nn as nn

__all__ = ["PruneSummary", "last_summary", "summaries", "attach", "set_summaries", "SUMMARY_ATTR"]

SUMMARY_ATTR = "_pyprune_summaries"


@dataclass
class PruneSummary:
    """Result of one :func:`pyprune.prune` call (all fields plain data).

    method:          the criterion used.
    request:         what was asked: ``ratio`` / ``global_ratio`` / ``flops`` / ``params``
                     / ``layer_ratios`` (number of layers named), ``min_channels``,
                     ``round_to``, ``budget_mode``, ``normalize`` (None where unused).
    groups:          groups of coupled channels found in the model.
    prunable:        of those, how many the graph can prune.
    pruned:          groups that lost at least one channel.
    channels_before: output channels of all traced producers' groups, before pruning.
    channels_after:  the same after pruning.
    params_before:   parameters of the model (as :func:`pyprune.profile` counts them).
    params_after:    the same after pruning.
    flops_before:    per-sample FLOPs before pruning, when a FLOPs or parameter budget
                     was searched (None otherwise: ``prune`` then runs no profile).
    flops_after:     the same after pruning (analytic, equal to ``pyprune.profile``).
    budget:          the budget search (``kind``, ``target``, ``achieved``, ``met``,
                     ``reachable_min``, ``mode``, ``normalize``, ``evaluations``) or None.
    layers:          ``{producer module: [channels before, channels after]}`` for every
                     producer of a pruned group.
    skipped:         groups left whole: ``{"group", "channels", "producers", "reason"}``;
                     reasons are the graph's (model output, an op it does not handle;
                     see ``graph.explain()``) or the plan's (``ignored``, no scores).
    warnings:        the messages of the :class:`pyprune.PruningWarning` s emitted.
    seconds:         wall time of the ``prune`` call.
    """

    method: str
    request: Dict[str, Any] = field(default_factory=dict)
    groups: int = 0
    prunable: int = 0
    pruned: int = 0
    channels_before: int = 0
    channels_after: int = 0
    params_before: int = 0
    params_after: int = 0
    flops_before: Optional[int] = None
    flops_after: Optional[int] = None
    budget: Optional[Dict[str, Any]] = None
    layers: Dict[str, List[int]] = field(default_factory=dict)
    skipped: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        """Plain-data copy (JSON-serializable, and loadable with ``weights_only=True``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PruneSummary":
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(d).items() if k in names})

    @property
    def params_ratio(self) -> float:
        """Parameters kept, as a fraction of ``params_before``."""
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def flops_ratio(self) -> Optional[float]:
        """FLOPs kept, as a fraction of ``flops_before`` (None when not counted)."""
        if self.flops_before is None or self.flops_after is None:
            return None
        return self.flops_after / self.flops_before if self.flops_before else 1.0

    def __str__(self) -> str:
        asked = ", ".join(f"{k}={v}" for k, v in self.request.items() if v is not None)
        lines = [f"pyprune.prune(method={self.method!r}{', ' + asked if asked else ''}) "
                 f"in {self.seconds:.2f} s",
                 f"  groups:   {self.pruned} pruned of {self.prunable} prunable "
                 f"({self.groups} in all, {len(self.skipped)} left whole)",
                 f"  channels: {self.channels_before:,} -> {self.channels_after:,}",
                 f"  params:   {self.params_before:,} -> {self.params_after:,} "
                 f"({100 * self.params_ratio:.1f}%)"]
        if self.flops_ratio is not None:
            lines.append(f"  FLOPs:    {self.flops_before:,} -> {self.flops_after:,} "
                         f"({100 * self.flops_ratio:.1f}%)")
        if self.budget is not None:
            b = self.budget
            lines.append(f"  budget:   {b['kind']}={b['target']:g}, achieved {b['achieved']:.4f} "
                         f"({'met' if b['met'] else 'NOT met'}; {b['mode']} search, "
                         f"{b['evaluations']} evaluations)")
        if self.layers:
            width = max(len(n) for n in self.layers)
            lines.append("  layers (output channels):")
            for name, (a, b) in self.layers.items():
                lines.append(f"    {name.ljust(width)}  {a:>5} -> {b:<5}")
        if self.skipped:
            lines.append("  left whole:")
            for s in self.skipped:
                prod = ", ".join(s["producers"][:3]) + ("..." if len(s["producers"]) > 3 else "")
                lines.append(f"    group {s['group']} ({s['channels']} ch; {prod or '-'}): "
                             f"{s['reason']}")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        return "\n".join(lines)


def summaries(model: nn.Module) -> List[PruneSummary]:
    """Every :class:`PruneSummary` of ``model``, oldest first (empty if never pruned
    by :func:`pyprune.prune`)."""
    return list(getattr(model, SUMMARY_ATTR, []))


def last_summary(model: nn.Module) -> Optional[PruneSummary]:
    """The summary of the latest :func:`pyprune.prune` of ``model``, or None."""
    got = getattr(model, SUMMARY_ATTR, None)
    return got[-1] if got else None


def attach(model: nn.Module, summary: PruneSummary) -> None:
    """Append ``summary`` to ``model``'s summaries (a plain attribute, not a module,
    parameter or buffer: it is not in the state dict)."""
    object.__setattr__(model, SUMMARY_ATTR, summaries(model) + [summary])


def set_summaries(model: nn.Module, dicts: List[Dict[str, Any]]) -> None:
    """Replace ``model``'s summaries by those of ``dicts`` (:meth:`PruneSummary.to_dict`
    output, as :func:`pyprune.load` reads them from a file)."""
    object.__setattr__(model, SUMMARY_ATTR, [PruneSummary.from_dict(d) for d in dicts])
