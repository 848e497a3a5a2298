"""One-call structured pruning: :func:`prune`, :func:`scores`, :func:`save`, :func:`load`.

``prune`` runs the pipeline graph -> criteria -> plan -> surgery::

    graph = pyprune.graph.build_graph(model, example_inputs)      # tracing
    s = pyprune.criteria.compute(method, model, example_inputs, data)
    plan = pyprune.plan.make_plan(graph, s, PlanConfig(ratio=..., ignore=...))
    pyprune.surgery.apply_plan(model, plan, optimizer)

Every argument is checked before any work, and the model is changed only by the last
step, once the plan is complete (and meets its budget): an error leaves it as it was.
"""
from __future__ import annotations

import inspect
import logging
import math
import re
import sys
import time
import warnings
from collections.abc import Iterable as _IterableABC, Mapping, Sized
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from . import criteria
from .budget import MODES, Budget, CostModel
from .errors import PruningWarning
from .graph import DependencyGraph, build_graph
from .io import load, save
from .plan import NORMALIZE_CHOICES, REDUCE_CHOICES, Plan, PlanConfig, make_plan
from .profile import profile
from .summary import PruneSummary, attach
from .surgery import apply_plan

__all__ = ["prune", "scores", "save", "load", "profile", "check_model", "PRUNE_OPTIONS"]

logger = logging.getLogger("pyprune")
if not logger.handlers:
    logger.addHandler(logging.NullHandler())  # a library prints nothing by default

_SURGERY_PARAMS = set(inspect.signature(apply_plan).parameters)
_UNSET: Any = object()

#: The options of :func:`prune` besides the criterion's own: ``{name: (stage, text)}``.
PRUNE_OPTIONS: Dict[str, Tuple[str, str]] = {
    "layer_ratios": ("plan", "dict {module name or module: ratio in [0, 1)}"),
    "global_ratio": ("plan", "float in [0, 1) or None"),
    "normalize": ("plan", "None, 'mean', 'max' or 'sum'"),
    "min_channels": ("plan", "int >= 1"),
    "round_to": ("plan", "int >= 1"),
    "reduce": ("plan", "'sum', 'mean' or 'max'"),
    "budget_mode": ("budget", "'global' or 'uniform'"),
    "leaf_modules": ("graph", "iterable of module classes or qualified names"),
    "shapes": ("graph", "'auto', 'real' or 'fake'"),
    "tracer": ("graph", "'auto', 'eager' or 'fx'"),
    "optimizer": ("surgery", "torch.optim.Optimizer or None"),
    "backup": ("surgery", "bool"),
    "zero_copy": ("surgery", "bool"),
}


# --------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------
def check_model(model: Any, what: str = "model") -> None:
    """Raise a clear TypeError / ValueError when ``model`` is not a plain, materialized
    ``nn.Module`` that pruning can change: a TorchScript module, a ``torch.compile``
    wrapper, a ``DataParallel`` / ``DistributedDataParallel`` / FSDP wrapper, or a model
    with tensors on the meta device.  Says what to pass instead."""
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            f"{what} is a TorchScript module ({type(model).__name__}): its code is compiled, "
            "so pyprune can neither trace its channels nor change its layers. Prune the "
            "original nn.Module, then torch.jit.script / torch.jit.trace the pruned model")
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} must be a torch.nn.Module, got {type(model).__name__}")
    cls = type(model)
    if cls.__name__ == "OptimizedModule" and cls.__module__.startswith("torch._dynamo"):
        raise TypeError(
            f"{what} is a torch.compile wrapper: pass the module it compiles (the one given "
            "to torch.compile), then compile the pruned model again")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise TypeError(
            f"{what} is wrapped in DistributedDataParallel: pass ddp.module (prune it on every "
            "process, identically), then wrap the pruned module in a new "
            "DistributedDataParallel (the old wrapper's buckets have the dense shapes)")
    if isinstance(model, nn.DataParallel):
        raise TypeError(f"{what} is wrapped in DataParallel: pass dp.module, then wrap the "
                        "pruned module again")
    if _is_fsdp(model):
        raise TypeError(
            f"{what} is sharded by FSDP ({cls.__name__}): pyprune needs whole tensors. "
            "Prune the unwrapped model (before FullyShardedDataParallel / fully_shard), "
            "then shard the pruned model")
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t.is_meta:
                raise ValueError(
                    f"{what} has tensors on the meta device ({kind} {name!r}): they have no "
                    "values to score or keep. Materialize the model first "
                    "(model.to_empty(device='cpu') and load its weights)")
            if type(t).__name__ == "DTensor":
                raise TypeError(f"{what} has a distributed tensor ({kind} {name!r}, DTensor): "
                                "prune the unsharded model, then shard it")


def _is_fsdp(model: nn.Module) -> bool:
    """FSDP1's wrapper or FSDP2's ``fully_shard`` mixin.  A model can only be one if
    ``torch.distributed.fsdp`` was imported (importing it takes seconds: not done here)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is not None:
        classes = tuple(c for c in (getattr(fsdp, "FullyShardedDataParallel", None),
                                    getattr(fsdp, "FSDPModule", None)) if isinstance(c, type))
        if classes and isinstance(model, classes):
            return True
    return any(c.__name__ in ("FullyShardedDataParallel", "FSDPModule")
               for c in type(model).__mro__)


def _describe(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def _check_fraction(name: str, v: Any, low_open: bool) -> float:
    """A number in [0, 1) (``low_open`` False) or in (0, 1] (True)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a number, got {_describe(v)}")
    v = float(v)
    if low_open:
        if not (0.0 < v <= 1.0):
            raise ValueError(f"{name} must be a number in (0, 1] (the fraction to keep), "
                             f"got {v!r}")
    elif not (0.0 <= v < 1.0) or math.isnan(v):
        raise ValueError(f"{name} must be a number in [0, 1) (the fraction to remove), got {v!r}")
    return v


def _check_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {_describe(v)}")
    if v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return v


def _check_choice(name: str, v: Any, choices: Tuple[Any, ...]) -> Any:
    if v is not None and not isinstance(v, str):
        raise TypeError(f"{name} must be one of {choices}, got {_describe(v)}")
    if v not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {v!r}")
    return v


def _check_option(name: str, v: Any, model: nn.Module) -> Any:
    """Type and value of one prune option (the stage that uses it re-validates)."""
    if name in ("backup", "zero_copy"):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool (True or False), got {_describe(v)}")
    elif name == "optimizer":
        if v is not None and not isinstance(v, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {_describe(v)}")
    elif name in ("min_channels", "round_to"):
        _check_int(name, v)
    elif name == "global_ratio":
        if v is not None:
            v = _check_fraction(name, v, low_open=False)
    elif name == "normalize":
        _check_choice(name, v, NORMALIZE_CHOICES)
    elif name == "reduce":
        _check_choice(name, v, REDUCE_CHOICES)
    elif name == "budget_mode":
        _check_choice(name, v, MODES)
    elif name == "shapes":
        _check_choice(name, v, ("auto", "real", "fake"))
    elif name == "tracer":
        _check_choice(name, v, ("auto", "eager", "fx"))
    elif name == "leaf_modules":
        if isinstance(v, (str, type)) or not isinstance(v, _IterableABC):
            raise TypeError(f"leaf_modules must be an iterable of module classes or qualified "
                            f"names, got {_describe(v)}")
        v = tuple(v)
        for item in v:
            if not isinstance(item, (str, type)):
                raise TypeError(f"leaf_modules: each entry must be a module class or a "
                                f"qualified name, got {_describe(item)}")
    elif name == "layer_ratios":
        v = _check_layer_ratios(v, model)
    return v


def _check_layer_ratios(v: Any, model: nn.Module) -> Dict[str, float]:
    if not isinstance(v, Mapping):
        raise TypeError("layer_ratios must be a dict {module name: ratio}, got "
                        f"{type(v).__name__}")
    names = None
    out: Dict[str, float] = {}
    for key, r in v.items():
        if isinstance(key, nn.Module):
            if names is None:
                names = {id(m): n for n, m in model.named_modules()}
            if id(key) not in names:
                raise ValueError(f"layer_ratios: module {type(key).__name__} is not part of "
                                 "the model")
            key = names[id(key)]
        elif not isinstance(key, str):
            raise TypeError(f"layer_ratios keys must be module names (str) or modules, got "
                            f"{_describe(key)}")
        else:
            try:
                model.get_submodule(key)
            except AttributeError:
                raise ValueError(f"layer_ratios: {key!r} is not a module of the model") from None
        out[key] = _check_fraction(f"layer_ratios[{key!r}]", r, low_open=False)
    return out


def _check_ignore(ignore: Any) -> Tuple[Union[str, nn.Module], ...]:
    if isinstance(ignore, (str, nn.Module)):
        return (ignore,)
    if ignore is None:
        return ()
    if not isinstance(ignore, _IterableABC):
        raise TypeError(f"ignore must be a module, a qualified name or an iterable of them, "
                        f"got {_describe(ignore)}")
    items = tuple(ignore)
    for item in items:
        if not isinstance(item, (str, nn.Module)):
            raise TypeError(f"ignore: each entry must be a module or a qualified name, got "
                            f"{_describe(item)}")
    return items


def _check_data(method: str, info: criteria.CriterionInfo, data: Any) -> Any:
    """The ``data`` to pass to the criterion: None for a method that takes none (with a
    warning when some was given); a clear error when required data is missing."""
    if info.data == "none":
        if data is not None:
            warnings.warn(f"method {method!r} scores weights only and ignores data "
                          f"({type(data).__name__} given)", PruningWarning, stacklevel=3)
        return None
    if data is None:
        if info.data == "required":
            raise ValueError(f"method {method!r} needs data: pass data=<an iterable of "
                             "batches> (tensors, (inputs, targets) pairs or a DataLoader)")
        return None
    if isinstance(data, (str, bytes)) or not isinstance(data, _IterableABC):
        raise TypeError(f"data must be an iterable of batches (tensors, (inputs, targets) "
                        f"pairs or a DataLoader), got {type(data).__name__}")
    if isinstance(data, Sized) and not isinstance(data, torch.Tensor):
        try:
            n = len(data)
        except TypeError:  # e.g. an IterableDataset's loader
            n = None
        if n == 0:
            raise ValueError(f"data is empty: method {method!r} needs at least one batch")
    return data


def _split_options(method: str, options: Dict[str, Any], model: nn.Module,
                   allowed: Iterable[str]) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Any]]:
    """``({stage: {option: value}}, criterion options)``; unknown options and mistyped
    values raise a TypeError naming them."""
    allowed = set(allowed)
    accepted = criteria.options(method)
    staged: Dict[str, Dict[str, Any]] = {"plan": {}, "budget": {}, "graph": {}, "surgery": {}}
    crit: Dict[str, Any] = {}
    for k, v in options.items():
        if k in allowed:
            stage = PRUNE_OPTIONS[k][0]
            staged[stage][k] = _check_option(k, v, model)
        elif accepted is None or k in accepted:
            crit[k] = v
        else:
            own = ", ".join(sorted(allowed)) or "none"
            theirs = ", ".join(accepted) if accepted else "none"
            raise TypeError(f"unknown option {k!r}={v!r}: method {method!r} does not take option "
                            f"{k!r} (its options: {theirs}); options of this call: {own}")
    if "zero_copy" in staged["surgery"] and "zero_copy" not in _SURGERY_PARAMS:
        if staged["surgery"].pop("zero_copy"):
            raise ValueError("zero_copy=True is not supported by this pyprune.surgery "
                             "(apply_plan has no zero_copy option)")
    return staged, crit


def _check_method(method: Any) -> criteria.CriterionInfo:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string naming a criterion, got {_describe(method)}")
    return criteria.info(method)  # ValueError listing the supported ones


# --------------------------------------------------------------------------------------
# scores / prune
# --------------------------------------------------------------------------------------
def scores(model: nn.Module, example_inputs: Any, method: str = "l1", data: Any = None,
           **options: Any) -> Dict[str, torch.Tensor]:
    """``{qualified conv/linear name: per-output-channel scores}`` from criterion ``method``.

    ``method`` is a key of :data:`pyprune.criteria.CRITERIA` (``"l1"``, ``"l2"``,
    ``"random"``, ``"hrank"``, ``"bn"``, ... whatever is registered); ``data`` is an
    iterable of batches for the methods that use it (required for data-driven ones,
    warned about and ignored for weight-only ones); ``options`` go to the criterion
    (e.g. ``seed`` for ``"random"``; unknown ones raise a TypeError).  The model is
    not changed.
    """
    check_model(model)
    info = _check_method(method)
    data = _check_data(method, info, data)
    _, crit = _split_options(method, options, model, ())
    return criteria.compute(method, model, example_inputs, data=data, **crit)


def prune(model: nn.Module, example_inputs: Any, method: str = "l1",
          ratio: Optional[float] = None, data: Any = None,
          ignore: Iterable[Union[str, nn.Module]] = (), flops: Optional[float] = None,
          params: Optional[float] = None, **options: Any) -> nn.Module:
    """Prune ``model`` physically, in place, and return it.

    Channels are removed in groups of coupled channels (found by tracing ``model`` on
    ``example_inputs``, see :mod:`pyprune.graph`); a group's channels with the lowest
    scores under ``method`` go.  Model outputs are never pruned, no layer ever becomes
    zero-width.  The model is changed only once the whole plan is made: any error leaves
    it as it was.  What was done is stored on the model as a
    :class:`~pyprune.summary.PruneSummary` (``pyprune.summary.last_summary(model)``).

    Args:
        model (nn.Module): a plain module (not TorchScript, not wrapped in DDP / FSDP /
            DataParallel / torch.compile: pass the wrapped module, then wrap again).
        example_inputs (Tensor or tuple): one batch the model runs on (``model(x)`` or
            ``model(*inputs)``); used for tracing and, with a budget, FLOP counting.
        method (str, default ``"l1"``): the criterion, a key of
            :data:`pyprune.criteria.CRITERIA`.
        ratio (float in [0, 1), default None meaning 0.5): fraction of the channels
            of every prunable group to remove (uniform).  For a method whose ``ratio``
            is global (``"slim"``: :attr:`CriterionInfo.global_threshold`), the fraction
            of all prunable channels removed under one threshold across groups.
            Cannot be combined with ``flops``/``params`` or ``global_ratio``.
        data (iterable, default None): batches (tensors, ``(inputs, targets)`` pairs,
            a DataLoader) for data-driven methods; required by those, warned about
            (:class:`~pyprune.PruningWarning`) and ignored by weight-only ones.
        ignore (module, name, or iterable of them, default ()): modules whose output
            channels are never pruned (a group containing one is left whole).
        flops (float in (0, 1], default None): keep this fraction of the model's FLOPs
            (as :func:`pyprune.profile` counts them), within 1%.
        params (float in (0, 1], default None): keep this fraction of the model's
            parameters, within 1%.  Give ``flops`` or ``params``, not both.

    Options (keyword only; anything else goes to the criterion, and names it does not
    take raise a TypeError):
        layer_ratios (dict {module name or module: ratio in [0, 1)}, default {}): the
            ratio of the group holding that module's output channels, overriding
            ``ratio`` (and excluded from a budget search or global ratio).  Names must
            be modules of the model that produce traced channels (conv / linear).
            HRank's per-layer compress rates are expressed this way, e.g.
            ``layer_ratios=dict(zip(conv_names, [0.95] + [0.5] * 6 + [0.9] * 4 + [0.8] * 2))``.
        global_ratio (float in [0, 1) or None, default None): remove this fraction of
            all prunable channels, lowest (normalized) scores first across groups.
        normalize (None, "mean", "max" or "sum"; default: the method's
            :attr:`CriterionInfo.normalize`): per-group score normalization used by
            ``global_ratio``, a global ``ratio`` and the global budget search.
        min_channels (int >= 1, default 1): channels every layer keeps at least.
        round_to (int >= 1, default 1): keep counts are rounded up to multiples of it.
        reduce ("sum", "mean" or "max"; default: the method's
            :attr:`CriterionInfo.reduce`, else "sum"): how coupled channels' scores
            combine into one group score.
        budget_mode ("global" or "uniform", default "global"): how a ``flops`` /
            ``params`` budget is searched.  "global": one threshold over normalized
            scores, so the criterion decides each layer's width; "uniform": every group
            removes the same fraction (within one channel).  Both reach any budget at
            one-channel granularity (see :func:`pyprune.plan.make_plan`).
        leaf_modules (iterable of classes or names, default ()): modules the graph does
            not trace into (kept whole).
        shapes ("auto", "real" or "fake", default "auto"): how the graph learns tensor
            shapes (see :func:`pyprune.graph.build_graph`).
        tracer ("auto", "eager" or "fx", default "auto"): how the graph traces the model
            (see :func:`pyprune.graph.build_graph`).
        optimizer (torch.optim.Optimizer or None, default None): its per-parameter state
            (momentum, Adam moments) is pruned with the parameters.
        backup (bool, default True): copy what surgery overwrites, so a failure inside it
            is undone exactly (see :func:`pyprune.surgery.apply_plan`).
        zero_copy (bool, default False): keep the pruned tensors in their dense storage
            instead of compacting into fresh storage (when surgery supports it).

    Warnings (:class:`pyprune.PruningWarning`; details on ``logging.getLogger("pyprune")``):
    groups left whole because of an op the graph does not handle (naming the op and the
    number of groups; see ``pyprune.graph.build_graph(model, x).explain()``), a budget met
    only approximately (``round_to`` steps), nothing removed although asked, ``data``
    given to a method that ignores it.

    Raises:
        TypeError: a mistyped argument or option, an unknown option, a wrapped model.
        ValueError: a value out of range, conflicting targets (``ratio`` with ``flops``,
            ...), an unknown method or module name, missing ``data``, an unreachable
            budget (the message names the closest reachable value).
    """
    start = time.perf_counter()
    check_model(model)
    info = _check_method(method)
    staged, crit = _split_options(method, options, model, PRUNE_OPTIONS)
    plan_kw, graph_kw, surgery_kw = staged["plan"], staged["graph"], staged["surgery"]
    budget_mode = staged["budget"].get("budget_mode", "global")
    ignore_t = _check_ignore(ignore)
    targets = {}
    for kind, v in (("flops", flops), ("params", params)):
        if v is not None:
            targets[kind] = _check_fraction(kind, v, low_open=True)
    if len(targets) > 1:
        raise ValueError(f"give flops or params, not both; got flops={flops!r}, params={params!r}")
    if ratio is not None:
        ratio = _check_fraction("ratio", ratio, low_open=False)
        if targets:
            kind = next(iter(targets))
            raise ValueError(f"give ratio or {kind}, not both; got ratio={ratio!r}, "
                             f"{kind}={targets[kind]!r}")
        if plan_kw.get("global_ratio") is not None:
            raise ValueError(f"give ratio or global_ratio, not both; got ratio={ratio!r}, "
                             f"global_ratio={plan_kw['global_ratio']!r}")
    if targets and plan_kw.get("global_ratio") is not None:
        kind = next(iter(targets))
        raise ValueError(f"give {kind} or global_ratio, not both; got {kind}={targets[kind]!r}, "
                         f"global_ratio={plan_kw['global_ratio']!r}")
    if "budget_mode" in staged["budget"] and not targets:
        raise ValueError("budget_mode applies to a flops= or params= budget, and neither "
                         "was given")
    data = _check_data(method, info, data)
    plan_kw.setdefault("normalize", info.normalize)
    if info.reduce is not None:
        plan_kw.setdefault("reduce", info.reduce)
    asked_ratio = 0.5 if ratio is None else ratio
    if info.global_threshold and not targets and plan_kw.get("global_ratio") is None:
        plan_kw["global_ratio"] = asked_ratio
    config = PlanConfig(ratio=asked_ratio, ignore=ignore_t, **plan_kw)

    graph = build_graph(model, example_inputs, **graph_kw)
    for name in config.layer_ratios:
        if name not in graph.out_maps:
            raise ValueError(f"layer_ratios: {name!r} produces no traced output channels "
                             "(name a conv or linear layer; see graph.explain())")
    s = criteria.compute(method, model, example_inputs, data=data, **crit)
    budget = None
    if targets:
        kind, target = next(iter(targets.items()))
        dense = profile(model, example_inputs)
        budget = Budget(kind, target, CostModel(graph, model, dense))
    plan = make_plan(graph, s, config, budget=budget, budget_mode=budget_mode)
    before = _stats(model, graph)
    after_flops = None
    if budget is not None:
        _, after_flops = budget.cost.evaluate(plan.kept_mask())
    request = {"ratio": None if (targets or config.global_ratio is not None) else asked_ratio,
               "global_ratio": config.global_ratio, "flops": flops, "params": params,
               "layer_ratios": len(config.layer_ratios) or None,
               "min_channels": config.min_channels, "round_to": config.round_to,
               "budget_mode": budget_mode if targets else None,
               "normalize": config.normalize if (targets and budget_mode == "global")
               or config.global_ratio is not None else None}
    summary = _summarize(method, request, graph, plan, before,
                         None if budget is None else budget.cost.dense_flops, after_flops)
    apply_plan(model, plan, **surgery_kw)  # the only step that changes the model
    summary.params_after = sum(p.numel() for p in model.parameters())
    if targets:
        asked_nothing = next(iter(targets.values())) == 1.0
    else:
        main = asked_ratio if config.global_ratio is None else config.global_ratio
        asked_nothing = main == 0.0 and not any(config.layer_ratios.values())
    messages = _warnings(summary, graph, plan, asked_nothing)
    summary.warnings = [m for m, _ in messages]
    summary.seconds = time.perf_counter() - start
    attach(model, summary)
    logger.info("%s", summary)
    for msg, detail in messages:
        if detail:
            logger.info("%s", detail)
        warnings.warn(msg, PruningWarning, stacklevel=2)
    return model


# --------------------------------------------------------------------------------------
# summary and warnings
# --------------------------------------------------------------------------------------
def _stats(model: nn.Module, graph: DependencyGraph) -> Dict[str, Any]:
    return {"params": sum(p.numel() for p in model.parameters()),
            "channels": graph.num_channels}


def _summarize(method: str, request: Dict[str, Any], graph: DependencyGraph, plan: Plan,
               before: Dict[str, Any], flops_before: Optional[int],
               flops_after: Optional[int]) -> PruneSummary:
    """The summary of ``plan`` (made before surgery; ``params_after`` is set after it)."""
    mask = plan.kept_mask()
    layers: Dict[str, List[int]] = {}
    for gid in sorted(plan.keep):
        for p in graph.groups[gid].producers:
            if p not in layers:
                idx = graph.out_index(p)
                layers[p] = [int(idx.numel()), int(mask[idx].sum())]
    skipped = []
    for g in graph.groups:
        if g.size == 0:
            continue
        reason = "; ".join(g.reasons) if g.reasons else plan.skipped.get(g.id)
        if reason is not None:
            skipped.append({"group": g.id, "channels": g.size, "producers": list(g.producers),
                            "reason": reason})
    return PruneSummary(
        method=method, request=request, groups=len(graph.groups),
        prunable=len(graph.prunable_groups), pruned=len(plan.keep),
        channels_before=int(before["channels"]), channels_after=int(mask.sum()),
        params_before=int(before["params"]), params_after=int(before["params"]),
        flops_before=flops_before, flops_after=flops_after,
        budget=None if plan.budget is None else dict(plan.budget),
        layers=layers, skipped=skipped)


_WHERE = re.compile(r"\s*\(((?:at )?(?:nodes?|module) [^)]*)\)")


def _op_of(reason: str) -> Tuple[str, List[str]]:
    """``(reason without its locations, the locations)``: the same op met in many places
    counts once, with its places listed."""
    where = [w if w.startswith("at ") else "at " + w for w in _WHERE.findall(reason)]
    return _WHERE.sub("", reason).strip(), where


def _warnings(summary: PruneSummary, graph: DependencyGraph, plan: Plan,
              asked_nothing: bool) -> List[Tuple[str, str]]:
    """``[(warning message, logged detail)]`` for a pruning that did less than asked."""
    out: List[Tuple[str, str]] = []
    by_op: Dict[str, List[int]] = {}
    places: Dict[str, List[str]] = {}
    for g in graph.groups:
        for r in g.reasons:
            if r == "model output":
                continue
            op, where = _op_of(r)
            ids = by_op.setdefault(op, [])
            if g.id not in ids:
                ids.append(g.id)
            seen = places.setdefault(op, [])
            seen.extend(w for w in where if w not in seen)

    def at(op: str) -> str:
        p = places[op]
        if not p:
            return ""
        return "; " + ", ".join(p[:3]) + (f" and {len(p) - 3} more" if len(p) > 3 else "")

    if by_op:
        gids = sorted({gid for ids in by_op.values() for gid in ids})
        n_ch = sum(graph.groups[gid].size for gid in gids)
        ops = sorted(by_op.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        shown = "; ".join(f"{op} ({len(ids)} group{'s' if len(ids) > 1 else ''}{at(op)})"
                          for op, ids in ops[:5])
        more = f"; and {len(ops) - 5} more" if len(ops) > 5 else ""
        msg = (f"{len(gids)} group(s) of channels ({n_ch} channels) left whole because of "
               f"something the graph does not handle: {shown}{more}. See "
               "pyprune.graph.build_graph(model, example_inputs).explain() (details on the "
               "'pyprune' logger)")
        detail = "groups left whole:\n" + "\n".join(
            f"  group {gid} ({graph.groups[gid].size} channels, producers "
            f"{', '.join(graph.groups[gid].producers) or '-'}): "
            + "; ".join(graph.groups[gid].reasons) for gid in gids)
        out.append((msg, detail))
    b = plan.budget
    if b is not None and not b["met"]:
        out.append((f"budget met only approximately: {b['kind']}={b['target']:g} asked, "
                    f"{b['achieved']:.4f} kept (round_to={summary.request.get('round_to')} "
                    "steps are too coarse for 1%)", ""))
    if not plan.keep and not asked_nothing:
        why = ("no group is prunable" if not graph.prunable_groups else
               "every prunable group was skipped (ignored or unscored)"
               if len(plan.skipped) >= len(graph.prunable_groups) else
               "the ratio rounds to zero channels in every group")
        out.append((f"nothing was pruned: {why}", ""))
    return out
