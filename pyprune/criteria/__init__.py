"""Criteria: one score per output channel of each conv / linear layer.

A criterion is a callable ``fn(model, example_inputs, data=None, **options)`` returning
``{qualified module name: 1-D tensor of per-output-channel scores}`` (higher = more
important).  Criteria read the model and never change it.  They live in the
:data:`CRITERIA` registry (a dict name -> callable); add one with :func:`register`::

    @pyprune.criteria.register("taylor")
    def taylor(model, example_inputs, data=None, **options): ...

``pyprune.prune(..., method=name)`` and ``pyprune.scores(..., method=name)`` look the
method up here.

Each registered criterion also carries a :class:`CriterionInfo` (``info(name)``) that
tells the orchestrator how to drive it without special cases per name:

* ``data``: ``"none"`` (weights only: ``data`` given to it is warned about and ignored),
  ``"required"`` (``data`` must be a non-empty iterable of batches) or ``"optional"``;
* ``global_threshold``: ``ratio`` means one global fraction across all layers (the
  Network Slimming meaning) instead of a uniform per-group fraction;
* ``normalize``: the per-group score normalization used when a global threshold or a
  budget search compares scores across groups (``None``: raw scores are comparable).
* ``reduce``: how the scores of coupled channels (one channel of a residual stream is
  produced by many layers) combine into one group score, ``"sum"``, ``"mean"`` or
  ``"max"``, when the caller gives none (``None``: the plan's default, ``"sum"``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch

__all__ = ["CRITERIA", "Criterion", "CriterionInfo", "register", "get", "info", "options",
           "compute"]

Criterion = Callable[..., Dict[str, torch.Tensor]]

CRITERIA: Dict[str, Criterion] = {}

_DATA_KINDS = ("none", "optional", "required")
_NORMALIZE = (None, "mean", "max", "sum")
_REDUCE = (None, "sum", "mean", "max")


@dataclass(frozen=True)
class CriterionInfo:
    """How the orchestrator drives a criterion (see the module docstring)."""

    data: str = "none"
    global_threshold: bool = False
    normalize: Optional[str] = "mean"
    reduce: Optional[str] = None


_INFO: Dict[str, CriterionInfo] = {}


def register(name: str, *, data: str = "none", global_threshold: bool = False,
             normalize: Optional[str] = "mean",
             reduce: Optional[str] = None) -> Callable[[Criterion], Criterion]:
    """Decorator adding a criterion to :data:`CRITERIA` under ``name``.

    ``data``, ``global_threshold``, ``normalize`` and ``reduce`` fill its
    :class:`CriterionInfo`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"criterion name must be a non-empty string, got {name!r}")
    if data not in _DATA_KINDS:
        raise ValueError(f"data must be one of {_DATA_KINDS}, got {data!r}")
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
    if reduce not in _REDUCE:
        raise ValueError(f"reduce must be one of {_REDUCE}, got {reduce!r}")
    meta = CriterionInfo(data=data, global_threshold=bool(global_threshold), normalize=normalize,
                         reduce=reduce)

    def deco(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        _INFO[name] = meta
        return fn

    return deco


def info(name: str) -> CriterionInfo:
    """The :class:`CriterionInfo` of criterion ``name`` (ValueError if unknown)."""
    get(name)
    return _INFO.get(name, CriterionInfo())


def get(name: str) -> Criterion:
    """The criterion registered as ``name`` (ValueError listing the supported ones)."""
    try:
        return CRITERIA[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown pruning method {name!r}; supported methods: "
                         f"{', '.join(sorted(CRITERIA))}") from None


def options(name: str) -> Optional[Tuple[str, ...]]:
    """Names of the keyword options criterion ``name`` takes (its parameters after
    ``model`` and ``example_inputs``, less ``data``), or None when it takes any
    (``**options``).  ValueError if the criterion is unknown."""
    fn = get(name)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a callable without a signature: accept anything
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    named = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                              inspect.Parameter.KEYWORD_ONLY)]
    positional = [p for p in named if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    skip = {p.name for p in positional[:2]} | {"data"}
    return tuple(p.name for p in named if p.name not in skip)


def compute(name: str, model: torch.nn.Module, example_inputs: Any, data: Any = None,
            **options: Any) -> Dict[str, torch.Tensor]:
    """Run criterion ``name``; options it does not take raise a clear TypeError."""
    fn = get(name)
    try:
        return fn(model, example_inputs, data=data, **options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise TypeError(f"method {name!r} does not take option(s) {sorted(options)}: {e}") from e
        raise


# Each criterion module registers its methods on import.
from . import magnitude, random  # noqa: E402,F401  (l1, l2, random)
from . import bn, taylor  # noqa: E402,F401  (bn, slim, taylor)
from . import hrank, activation  # noqa: E402,F401  (hrank, apoz, activation)
