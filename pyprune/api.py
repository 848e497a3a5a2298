"""One-call structured pruning: :func:`prune`, :func:`scores`, :func:`save`, :func:`load`.

``prune`` runs the pipeline graph -> criteria -> plan -> surgery::

    graph = pyprune.graph.build_graph(model, example_inputs)      # torch.fx tracing
    s = pyprune.criteria.compute(method, model, example_inputs, data)
    plan = pyprune.plan.make_plan(graph, s, PlanConfig(ratio=..., ignore=...))
    pyprune.surgery.apply_plan(model, plan, optimizer)
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Union

import torch
import torch.nn as nn

from . import criteria
from .graph import build_graph
from .io import load, save
from .plan import PlanConfig, make_plan
from .profile import profile
from .surgery import apply_plan

__all__ = ["prune", "scores", "save", "load", "profile"]

_PLAN_OPTIONS = set(PlanConfig.field_names()) - {"ratio", "ignore"}
_GRAPH_OPTIONS = {"leaf_modules", "shapes", "tracer"}
_SURGERY_OPTIONS = {"optimizer", "backup"}


def scores(model: nn.Module, example_inputs: Any, method: str = "l1", data: Any = None,
           **options: Any) -> Dict[str, torch.Tensor]:
    """``{qualified conv/linear name: per-output-channel scores}`` from criterion ``method``.

    ``method`` is a key of :data:`pyprune.criteria.CRITERIA` (``"l1"``, ``"l2"``,
    ``"random"``, and whatever else is registered); ``options`` go to the criterion
    (e.g. ``seed`` for ``"random"``).  The model is not changed.
    """
    criteria.get(method)  # clear ValueError for unknown methods, before any work
    return criteria.compute(method, model, example_inputs, data=data, **options)


def prune(model: nn.Module, example_inputs: Any, method: str = "l1", ratio: float = 0.5,
          data: Any = None, ignore: Iterable[Union[str, nn.Module]] = (),
          **options: Any) -> nn.Module:
    """Prune ``model`` physically, in place, and return it.

    ``ratio`` removes that fraction of the channels of every prunable group of coupled
    channels (found by torch.fx tracing, see :mod:`pyprune.graph`).  ``ignore`` lists
    modules (or qualified names) whose output channels are never pruned (a group
    containing one is left whole); model outputs are never pruned.

    ``options`` may hold :class:`~pyprune.plan.PlanConfig` fields (``layer_ratios``,
    ``global_ratio``, ``normalize``, ``min_channels``, ``round_to``, ``reduce``),
    ``optimizer`` (its state is pruned too), ``backup`` (surgery), ``leaf_modules``, ``tracer`` and
    ``shapes`` (graph), and options of the criterion ``method`` (e.g. ``seed``).
    """
    criteria.get(method)
    plan_kw = {k: options.pop(k) for k in list(options) if k in _PLAN_OPTIONS}
    graph_kw = {k: options.pop(k) for k in list(options) if k in _GRAPH_OPTIONS}
    surgery_kw = {k: options.pop(k) for k in list(options) if k in _SURGERY_OPTIONS}
    config = PlanConfig(ratio=ratio, ignore=tuple(ignore) if not isinstance(
        ignore, (str, nn.Module)) else (ignore,), **plan_kw)
    graph = build_graph(model, example_inputs, **graph_kw)
    s = criteria.compute(method, model, example_inputs, data=data, **options)
    plan = make_plan(graph, s, config)
    apply_plan(model, plan, **surgery_kw)
    return model
