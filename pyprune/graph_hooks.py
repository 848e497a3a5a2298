"""Where each convolution is scored by activation statistics (HRank, APoZ, mean activation).

:func:`activation_points` reads the traced op list of a
:class:`~pyprune.graph.DependencyGraph` (its public ``nodes``) and returns, for every
convolution, a :class:`HookPoint`: the module call whose output (or input) is the
tensor the statistics of that convolution's output channels are computed on.

The rule (the HRank reference, lmbxmu/HRank, hooks the same tensors):

1. Follow the conv's output forward while it has exactly one consumer and that consumer
   is channel-wise and keeps the shape: BatchNorm / InstanceNorm / GroupNorm / Identity /
   Dropout modules, and elementwise ``+ - * /`` with another tensor of the same shape or
   a number (a residual add, in place or not).
2. The first activation reached that way (``ReLU``, ``ReLU6``, ``LeakyReLU``, ``PReLU``,
   ``ELU``, ``SELU``, ``CELU``, ``GELU``, ``SiLU``, ``Mish``, ``Hardswish``,
   ``Hardtanh``, ``Sigmoid``, ``Tanh`` as modules, functions or tensor methods) is the
   scored tensor: its output.  So ``conv -> BN -> ReLU`` is scored on the ReLU, and in a
   ResNet basic block ``conv2 -> BN -> (+ shortcut) -> ReLU`` is scored on the ReLU
   **after** the residual add, as is a projection shortcut ``conv1x1 -> BN`` feeding the
   same add (both belong to one group of coupled channels and see the same tensor).
3. Without such an activation (the chain ends at an add that no activation follows, a
   pooling, a concatenation, a branch into several consumers, the model output), the
   conv is scored on the output of the last module of its own ``conv -> BN/Identity/
   Dropout`` chain *before* any add: its BatchNorm's output, or the conv's own output.

A module activation is hooked with a forward hook at its call index (the k-th call of
that module in one forward pass: a ReLU module used twice, as in torchvision's ResNet,
is told apart by call order).  A functional activation (``F.relu(x)``) has no module; it
is read as the input of the first module that consumes it (a forward pre-hook), or, if
no module consumes it, rule 3 applies.  A conv the trace does not see (inside a module
kept opaque) is scored on its own output.
"""
from __future__ import annotations

import logging
import operator
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .graph import DependencyGraph, build_graph

__all__ = ["HookPoint", "activation_points", "conv_layers"]

_log = logging.getLogger("pyprune")

_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
                nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.RReLU)
_ACT_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_,
                  F.prelu, F.elu, F.elu_, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
                  F.hardtanh, F.hardtanh_, torch.sigmoid, torch.tanh, F.rrelu, torch.clamp,
                  torch.clamp_min, torch.nn.functional.threshold}
_ACT_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_",
                "clamp_min", "clamp_min_"}
_OWN_MODULES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                nn.GroupNorm, nn.Identity, nn.modules.dropout._DropoutNd)
_BINARY_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
                     operator.imul, operator.truediv, operator.itruediv, torch.add, torch.sub,
                     torch.mul, torch.div}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "__add__",
                   "__iadd__", "__radd__", "__sub__", "__isub__", "__mul__", "__imul__",
                   "__rmul__", "__truediv__", "__itruediv__"}


@dataclass(frozen=True)
class HookPoint:
    """The tensor a convolution is scored on.

    ``module`` (qualified name) is hooked at its ``call``-th call of a forward pass
    (0-based); ``where`` is ``"output"`` (a forward hook: the module's output) or
    ``"input"`` (a forward pre-hook: positional argument ``arg``).  ``tensor`` names the
    traced value (e.g. ``"layer1_0_relu2"``) and ``rule`` says which rule of the module
    docstring chose it: ``"activation"`` or ``"own"``.
    """

    module: str
    call: int = 0
    where: str = "output"
    arg: int = 0
    tensor: str = ""
    rule: str = "activation"

    @property
    def key(self) -> Tuple[str, int, str, int]:
        """Convolutions with equal keys are scored on the same tensor."""
        return (self.module, self.call, self.where, self.arg)


def conv_layers(model: nn.Module, layers: Optional[Iterable[Union[str, nn.Module]]] = None
                ) -> List[str]:
    """Qualified names of the convolutions selected by ``layers`` (default: every conv).

    ``layers`` holds names or modules of ``model``'s convolutions; anything else is a
    ``ValueError`` naming ``layers``.
    """
    names: Dict[int, str] = {}
    convs: Dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        names.setdefault(id(m), name)
        if isinstance(m, nn.modules.conv._ConvNd) and names[id(m)] == name:
            convs[name] = m
    if layers is None:
        return list(convs)
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    out: List[str] = []
    for item in layers:
        if isinstance(item, nn.Module):
            name = names.get(id(item))
            if name is None:
                raise ValueError(f"layers: module {type(item).__name__} is not part of the model")
        elif isinstance(item, str):
            name = item
        else:
            raise ValueError(f"layers must hold module names or modules, got {item!r}")
        if name not in convs:
            raise ValueError(f"layers: {name!r} is not a convolution of the model; "
                             f"convolutions: {list(convs)[:8]}...")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"layers selects no convolution, got {layers!r}")
    return out


def _is_act(node: Any, modules: Dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _ACT_MODULES)
    if node.op == "call_function":
        return node.target in _ACT_FUNCTIONS
    if node.op == "call_method":
        return node.target in _ACT_METHODS
    return False


def _is_own(node: Any, modules: Dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules.get(node.target), _OWN_MODULES)


def _shape(node: Any) -> Optional[Tuple[int, ...]]:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _is_binary(node: Any, prev: Any) -> bool:
    if node.op == "call_function":
        ok = node.target in _BINARY_FUNCTIONS
    elif node.op == "call_method":
        ok = node.target in _BINARY_METHODS
    else:
        return False
    if not ok:
        return False
    others = [a for a in node.args if a is not prev]
    if len(others) != len(node.args) - 1 or len(others) != 1:
        return False
    other = others[0]
    if isinstance(other, (int, float)):
        return True
    return hasattr(other, "meta") and _shape(other) == _shape(prev) and _shape(prev) is not None


def activation_points(model: nn.Module, example_inputs: Any = None, *,
                      graph: Optional[DependencyGraph] = None,
                      layers: Optional[Iterable[Union[str, nn.Module]]] = None
                      ) -> Dict[str, HookPoint]:
    """``{conv name: HookPoint}``: the tensor each selected convolution is scored on.

    The rule is in the module docstring.  ``graph`` (a traced
    :class:`~pyprune.graph.DependencyGraph` of ``model``) is built from
    ``example_inputs`` when not given.
    """
    selected = conv_layers(model, layers)
    if graph is None:
        graph = build_graph(model, example_inputs)
    modules = dict(model.named_modules())
    nodes = list(graph.nodes)
    order = {id(n): i for i, n in enumerate(nodes)}
    users: Dict[int, List[Any]] = {}
    calls: Dict[int, int] = {}
    seen_calls: Dict[str, int] = {}
    first_node: Dict[str, Any] = {}
    for n in nodes:
        for a in n.all_input_nodes:
            users.setdefault(id(a), []).append(n)
        if n.op == "call_module":
            calls[id(n)] = seen_calls.get(n.target, 0)
            seen_calls[n.target] = calls[id(n)] + 1
            first_node.setdefault(n.target, n)

    def module_point(n: Any, rule: str) -> HookPoint:
        return HookPoint(n.target, calls[id(n)], "output", 0, n.name, rule)

    def input_point(act: Any) -> Optional[HookPoint]:
        for u in sorted(users.get(id(act), []), key=lambda u: order[id(u)]):
            if u.op == "call_module":
                for p, a in enumerate(u.args):
                    if a is act:
                        return HookPoint(u.target, calls[id(u)], "input", p, act.name, "activation")
                return None
            if u.op == "call_method" and str(u.target).endswith("_"):
                return None  # modified in place before any module reads it
        return None

    out: Dict[str, HookPoint] = {}
    for name in selected:
        start = first_node.get(name)
        if start is None or seen_calls.get(name, 0) != 1:
            # not traced (inside an opaque module) or called more than once: own output
            out[name] = HookPoint(name, 0, "output", 0, name, "own")
            if start is not None:
                _log.info("%s is called %d times; scored on its own output", name, seen_calls[name])
            continue
        cur, own_end, past_binary, point = start, start, False, None
        while True:
            us = users.get(id(cur), [])
            if len(us) != 1:
                break
            u = us[0]
            if _is_act(u, modules):
                if _shape(u) == _shape(cur):
                    point = module_point(u, "activation") if u.op == "call_module" else input_point(u)
                break
            if _is_own(u, modules) and _shape(u) == _shape(cur):
                cur = u
                if not past_binary:
                    own_end = u
                continue
            if _is_binary(u, cur):
                cur, past_binary = u, True
                continue
            break
        if point is None:
            point = module_point(own_end, "own")
        out[name] = point
    return out
