"""Eager tracing: run the model once and record every op it calls.

A :class:`torch.overrides.TorchFunctionMode` sees every torch function, tensor method
and operator the forward pass calls, with its real arguments and result.  *Leaf*
modules (those the fx tracer would not trace into: ``torch.nn`` layers and the user's
``leaf_modules``; TorchScript modules too) get an instance-level ``forward`` for the duration of the
trace (removed afterwards) that records each call as one ``call_module`` node; what
runs inside them is not recorded.  Everything else becomes a ``call_function`` /
``call_method`` node.  A tensor argument is replaced by the
node that produced it (or a ``get_attr`` node for a parameter / buffer of the model,
a ``constant`` node for any other tensor), so the result is the same node list that
torch.fx would give, with the shape of every value attached, at the cost of one
forward pass instead of a symbolic trace plus a forward pass.

An eager trace records the path the example input takes.  That path is the model
only if no Python control flow depends on tensor *values*: the recorder watches
for tensor -> Python conversions (``bool(t)``, ``t.item()``, ...) outside leaf
modules and stops with :class:`DataDependent` on the first one, and the caller then
uses torch.fx, which keeps such code whole.  Shapes read from tensors
(``x.size(1)``, ``x.shape``) are returned as :class:`SizeInt`, an ``int`` that
remembers where it came from, so a ``view(n, c, -1)`` is not mistaken for a
hard-coded channel count.

With ``skip_arithmetic`` the convolutions, linear layers and eval-mode BatchNorm
(the arithmetic of a CNN's forward pass) are not computed: their results are
tensors of the shape torch gives (the formulas of the ``torch.nn`` docs, checked
against the real ops in the tests) whose values are not meaningful (zeros for the
functional forms, uninitialised for the plain ``torch.nn`` layers, which are not
run at all, nor is a plain ``nn.ReLU``).  Arguments the formulas do not cover run
the real op.  A data-dependent-shape op (``nonzero``, boolean indexing, ...)
outside leaf modules then raises :class:`NeedsValues`, and the caller traces again
without skipping; any other error does the same before it is reported.

Limits: ops that do not reach ``__torch_function__`` (a TorchScript module's
insides, tensors made from numpy) are invisible; a tensor the trace did not
produce becomes a ``constant`` node, which no handler treats as carrying channels,
and TorchScript modules are leaves (kept whole).  The model must not run in
another thread while it is traced: its leaf modules' ``forward`` is patched.
"""
from __future__ import annotations

import operator
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ._core import Node, TensorShape, map_nodes

__all__ = ["DataDependent", "NeedsValues", "SizeInt", "trace_eager"]


class DataDependent(Exception):
    """The forward pass turned a tensor value into a Python value (control flow)."""


class NeedsValues(Exception):
    """An op whose result's shape depends on tensor values ran on skipped arithmetic."""


def _size_op(name: str):
    f = getattr(int, name)

    def op(self, *other):
        r = f(self, *other)
        return SizeInt(r) if type(r) is int else r

    op.__name__ = name
    return op


class SizeInt(int):
    """An ``int`` read from a traced tensor's shape; arithmetic keeps the mark."""

    __slots__ = ()

    for _n in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
               "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__neg__",
               "__pos__", "__abs__"):
        locals()[_n] = _size_op(_n)
    del _n


# tensor -> Python value conversions: control flow on them depends on the data
_VALUE_READS = frozenset({
    "__bool__", "item", "tolist", "__int__", "__float__", "__index__", "__complex__",
    "numpy", "__array__", "equal", "allclose", "is_nonzero", "__iter__", "__contains__",
})
# metadata reads: nothing to record
_META_READS = frozenset({
    "size", "dim", "ndimension", "numel", "nelement", "stride", "storage_offset",
    "is_contiguous", "element_size", "is_floating_point", "is_complex", "data_ptr",
    "get_device", "__len__", "__format__", "__repr__", "__str__", "has_names",
    "is_set_to", "is_same_size", "__hash__", "type", "is_pinned", "is_shared",
    "untyped_storage", "__sizeof__",
})
# ops whose result's shape depends on the values of their inputs
_SHAPE_FROM_VALUES = frozenset({
    "nonzero", "nonzero_static", "argwhere", "masked_select", "unique",
    "unique_consecutive", "bincount", "histc", "repeat_interleave", "masked_scatter",
})


def _needs_values(name: str, args: tuple) -> bool:
    if name in _SHAPE_FROM_VALUES:
        return True
    if name == "where":  # torch.where(cond) is nonzero(); where(cond, a, b) is elementwise
        return len(args) == 1
    if name == "__getitem__" and len(args) > 1:  # boolean-mask indexing
        idx = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx)
    return False


# Tensor methods implemented in Python whose operands are swapped
_REFLECTED = {"__rsub__": operator.sub, "__rtruediv__": operator.truediv,
              "__rdiv__": operator.truediv, "__rpow__": operator.pow,
              "__rmatmul__": operator.matmul, "__rfloordiv__": operator.floordiv,
              "__rmod__": operator.mod, "__rlshift__": operator.lshift,
              "__rrshift__": operator.rshift}
_TensorBase = torch._C.TensorBase
_no_torch_function = torch._C.DisableTorchFunction
_MISSING = object()


def _tuple(v: Any, n: int) -> Optional[Tuple[int, ...]]:
    if type(v) is tuple and len(v) == n:  # what torch.nn layers hold
        for i in v:
            if type(i) is not int:
                break
        else:
            return v
    if isinstance(v, int):
        return (int(v),) * n
    if isinstance(v, (tuple, list)) and len(v) == n and all(isinstance(i, int) for i in v):
        return tuple(int(i) for i in v)
    return None


# Shape-only results.  Each ``*_shape`` planner checks a layer's constants once and
# returns ``run(x)``, or None when the constants are anything but the plain, valid
# case; ``run`` returns the result for input ``x`` (zeros, or uninitialised with
# ``empty``: values are not computed in this mode), or None to run the real op, which
# then raises the real error, if any.  The functional ops (``_SKIP``, per call) and
# the plain torch.nn layers (``_MODULE_SKIP``, once per module) share them.
def _conv_shape(nd: int, transposed: bool, w: Any, b: Any, stride: Any, pad: Any, dil: Any,
                groups: Any, opad: Any, empty: bool) -> Any:
    """``torch.conv{nd}d`` / ``conv_transpose{nd}d`` with these weights and settings."""
    stride, dil = _tuple(stride, nd), _tuple(dil, nd)
    if not isinstance(w, torch.Tensor) or w.dim() != nd + 2 or stride is None or \
            dil is None or not isinstance(groups, int) or groups < 1 or min(stride) < 1 or \
            min(dil) < 1:
        return None
    ws = w.shape
    k = ws[2:]
    if transposed:
        pad, opad = _tuple(pad, nd), _tuple(opad, nd)
        if pad is None or opad is None or ws[0] % groups or \
                any(o >= max(s, d) for o, s, d in zip(opad, stride, dil)):
            return None
        cin, cout = ws[0], ws[1] * groups
        # out = (i - 1) * s + c
        consts = [(s, -2 * p + d * (kk - 1) + o + 1)
                  for s, p, d, kk, o in zip(stride, pad, dil, k, opad)]
    else:
        if pad == "same":
            if any(s != 1 for s in stride):
                return None
            pad = None
        elif pad == "valid":
            pad = (0,) * nd
        else:
            pad = _tuple(pad, nd)
            if pad is None or min(pad) < 0:
                return None
        if ws[0] % groups:
            return None
        cin, cout = ws[1] * groups, ws[0]
        # out = (i + c) // s + 1, or i for 'same'
        consts = None if pad is None else [
            (s, 2 * p - d * (kk - 1) - 1) for s, p, d, kk in zip(stride, pad, dil, k)]
    if b is not None and (not isinstance(b, torch.Tensor) or b.shape != (cout,)):
        return None
    dtype, device = w.dtype, w.device

    def run(x: Any) -> Optional[torch.Tensor]:
        if type(x) is not torch.Tensor or x.dtype != dtype:
            return None
        shape = x.shape
        if len(shape) == nd + 2:
            lead = (shape[0], cout)
            c = shape[1]
        elif len(shape) == nd + 1:
            lead = (cout,)
            c = shape[0]
        else:
            return None
        if c != cin or x.device != device:
            return None
        spatial = shape[len(shape) - nd:]
        if consts is None:
            out = tuple(spatial)
        elif transposed:
            out = tuple((i - 1) * s + c for i, (s, c) in zip(spatial, consts))
        else:
            out = tuple((i + c) // s + 1 for i, (s, c) in zip(spatial, consts))
        if min(out) < 1:
            return None
        return x.new_empty(lead + out) if empty else x.new_zeros(lead + out)

    if nd == 2 and not transposed and consts is not None:
        (s0, c0), (s1, c1) = consts

        def run2d(x: Any) -> Optional[torch.Tensor]:  # the common case, spelled out
            if type(x) is not torch.Tensor or x.dtype != dtype:
                return None
            shape = x.shape
            if len(shape) != 4 or shape[1] != cin or x.device != device:
                return run(x)
            h, wd = (shape[2] + c0) // s0 + 1, (shape[3] + c1) // s1 + 1
            if h < 1 or wd < 1:
                return None
            out = (shape[0], cout, h, wd)
            return x.new_empty(out) if empty else x.new_zeros(out)

        return run2d

    return run


def _linear_shape(w: Any, b: Any, empty: bool) -> Any:
    """``F.linear`` with these weights."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or (
            b is not None and (not isinstance(b, torch.Tensor) or tuple(b.shape) != (w.shape[0],))):
        return None
    n_out, n_in, dtype, device = w.shape[0], w.shape[1], w.dtype, w.device

    def run(x: Any) -> Optional[torch.Tensor]:
        if type(x) is not torch.Tensor or x.dim() < 1 or x.shape[-1] != n_in or \
                x.dtype != dtype or x.device != device:
            return None
        shape = tuple(x.shape[:-1]) + (n_out,)
        return x.new_empty(shape) if empty else x.new_zeros(shape)

    return run


def _batch_norm_shape(mean: Any, var: Any, weight: Any, bias: Any, ndims: Tuple[int, ...],
                      empty: bool) -> Any:
    """``F.batch_norm`` in eval mode (running statistics) on inputs of ``ndims`` dims:
    the input's shape."""
    if not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor):
        return None
    c, device = mean.shape[0] if mean.dim() == 1 else -1, mean.device
    shape = (c,)
    for t in (mean, var, weight, bias):
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != shape
                              or t.device != device):
            return None

    def run(x: Any) -> Optional[torch.Tensor]:
        if type(x) is not torch.Tensor or x.dim() not in ndims or x.shape[1] != c or \
                x.device != device:
            return None
        # (the *_like allocators keep x's memory format, as batch_norm does)
        return torch.empty_like(x) if empty else torch.zeros_like(x)

    return run


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONVT_ARGS = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups",
               "dilation")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1,
                  "output_padding": 0}


def _bound(names: Tuple[str, ...], defaults: Dict[str, Any], args: tuple,
           kwargs: dict) -> Optional[Dict[str, Any]]:
    """A call's arguments by name (None when there are more positional ones than names)."""
    if len(args) > len(names):
        return None
    a = dict(defaults)
    a.update(zip(names, args))
    a.update(kwargs)
    return a


def _conv_result(nd: int, transposed: bool, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    a = _bound(_CONVT_ARGS if transposed else _CONV_ARGS, _CONV_DEFAULTS, args, kwargs)
    if a is None or "input" not in a or "weight" not in a:
        return None
    run = _conv_shape(nd, transposed, a["weight"], a["bias"], a["stride"], a["padding"],
                      a["dilation"], a["groups"], a["output_padding"], empty=False)
    return None if run is None else run(a["input"])


def _linear_result(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    a = _bound(("input", "weight", "bias"), {"bias": None}, args, kwargs)
    if a is None or "input" not in a:
        return None
    run = _linear_shape(a.get("weight"), a["bias"], empty=False)
    return None if run is None else run(a["input"])


def _batch_norm_result(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    a = _bound(("input", "running_mean", "running_var", "weight", "bias", "training",
                "momentum", "eps"), {"weight": None, "bias": None, "training": False},
               args, kwargs)
    if a is None or "input" not in a or a["training"] is not False:
        return None
    run = _batch_norm_shape(a.get("running_mean"), a.get("running_var"), a["weight"],
                            a["bias"], tuple(range(2, 64)), empty=False)
    return None if run is None else run(a["input"])


def _skippers() -> Dict[Any, Any]:
    table: Dict[Any, Any] = {torch.nn.functional.linear: _linear_result,
                             torch.nn.functional.batch_norm: _batch_norm_result}
    for nd in (1, 2, 3):
        table[getattr(torch, f"conv{nd}d")] = (
            lambda a, k, nd=nd: _conv_result(nd, False, a, k))
        table[getattr(torch, f"conv_transpose{nd}d")] = (
            lambda a, k, nd=nd: _conv_result(nd, True, a, k))
    return table


_SKIP = _skippers()


# (The exact torch.nn classes below keep their tensors in ``_parameters`` and
# ``_buffers``, which is where attribute lookup finds them: read those directly.)
def _conv_module(nd: int, transposed: bool):
    def make(m: Any) -> Any:
        if m.padding_mode != "zeros":
            return None
        p = m._parameters
        w, b = p.get("weight"), p.get("bias")
        consts = (m.stride, m.padding, m.dilation, m.groups, m.output_padding if transposed else 0)
        if not isinstance(w, torch.Tensor) or (b is not None and not isinstance(b, torch.Tensor)):
            return _conv_shape(nd, transposed, w, b, *consts, empty=True)
        # The planner depends on the weights only through their shapes, dtype and device:
        # layers with equal ones share it (most of a network's convs do).
        key = (nd, transposed, w.shape, w.dtype, w.device, None if b is None else b.shape, consts)
        try:
            run = _CONV_PLANNERS.get(key, _MISSING)
        except TypeError:  # an unhashable constant (a list, say)
            return _conv_shape(nd, transposed, w, b, *consts, empty=True)
        if run is _MISSING:
            if len(_CONV_PLANNERS) >= 4096:
                _CONV_PLANNERS.clear()
            run = _CONV_PLANNERS[key] = _conv_shape(nd, transposed, w, b, *consts, empty=True)
        return run
    return make


_CONV_PLANNERS: Dict[tuple, Any] = {}


def _bn_module(ndims: Tuple[int, ...]):
    def make(m: Any) -> Any:
        if m.training:
            return None
        p, b = m._parameters, m._buffers
        return _batch_norm_shape(b.get("running_mean"), b.get("running_var"), p.get("weight"),
                                 p.get("bias"), ndims, empty=True)
    return make


def _identity(x: Any) -> Optional[torch.Tensor]:
    return x if type(x) is torch.Tensor else None


def _relu_module(m: Any) -> Any:
    inplace = m.inplace

    def run(x: Any) -> Optional[torch.Tensor]:
        if type(x) is not torch.Tensor:
            return None
        return x if inplace else torch.empty_like(x)

    return run


# Exact torch.nn classes whose forward(x) is one of the ops above (or ReLU, or x
# itself): with skip_arithmetic they are not run at all.
_MODULE_SKIP: Dict[type, Any] = {
    nn.Conv1d: _conv_module(1, False), nn.Conv2d: _conv_module(2, False),
    nn.Conv3d: _conv_module(3, False), nn.ConvTranspose1d: _conv_module(1, True),
    nn.ConvTranspose2d: _conv_module(2, True), nn.ConvTranspose3d: _conv_module(3, True),
    nn.Linear: lambda m: _linear_shape(m.weight, m.bias, empty=True),
    nn.BatchNorm1d: _bn_module((2, 3)), nn.BatchNorm2d: _bn_module((4,)),
    nn.BatchNorm3d: _bn_module((5,)), nn.ReLU: _relu_module,
    nn.Identity: lambda m: _identity,  # forward(x) is x
}


def _has_tensor(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, (tuple, list)):
        return any(_has_tensor(v) for v in obj)
    if isinstance(obj, dict):
        return any(_has_tensor(v) for v in obj.values())
    return False


def _describe_value(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return TensorShape(tuple(obj.shape), obj.dtype)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_describe_value(v) for v in obj) if type(obj) in (tuple, list) \
            else tuple(_describe_value(v) for v in obj)
    return obj


class _Recorder(TorchFunctionMode):
    def __init__(self, modules: Dict[str, nn.Module], is_leaf: Callable[[nn.Module, str], bool],
                 param_names: Dict[int, str], skip_arithmetic: bool) -> None:
        super().__init__()
        seen = set()
        self.leaves: List[Tuple[nn.Module, str]] = []
        for name, m in modules.items():
            if id(m) in seen:  # a shared module is known by its first name
                continue
            seen.add(id(m))
            if name != "" and (isinstance(m, torch.jit.ScriptModule) or is_leaf(m, name)):
                self.leaves.append((m, name))
        self._patched: List[Tuple[nn.Module, Any]] = []
        self.param_names = param_names
        self.skip = skip_arithmetic
        self.nodes: List[Node] = []
        self._counts: Dict[str, int] = {}
        # id(tensor) -> (node, weakref): a dead tensor's id can be reused, the weakref
        # tells (keeping every value alive instead costs fresh memory for each op)
        self._producer: Dict[int, Tuple[Node, Any]] = {}
        self.depth = 0

    # nodes ----------------------------------------------------------------------------
    def _name(self, base: str) -> str:
        n = self._counts.get(base, 0)
        self._counts[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def _add(self, op: str, target: Any, args: tuple, kwargs: dict, base: str,
             value: Any) -> Node:
        if type(value) is torch.Tensor:  # the common case, without the generic walks
            meta = {"tensor_meta": TensorShape(tuple(value.shape), value.dtype)}
        else:
            meta = {"tensor_meta": _describe_value(value)} if _has_tensor(value) else {}
        node = Node(op, target, args, kwargs, self._name(base), meta)
        self.nodes.append(node)
        return node

    def _arg(self, a: Any) -> Any:
        if not isinstance(a, torch.Tensor):
            return a
        hit = self._producer.get(id(a))
        if hit is not None and hit[1]() is a:
            return hit[0]
        name = self.param_names.get(id(a))
        if name is not None:
            node = self._add("get_attr", name, (), {}, name.replace(".", "_"), a)
        else:
            node = self._add("constant", None, (), {}, "_tensor_constant", a)
        self._bind(a, node)
        return node

    def _args(self, args: tuple) -> tuple:
        out = []
        for a in args:
            if isinstance(a, torch.Tensor):
                out.append(self._arg(a))
            elif isinstance(a, (tuple, list, dict, slice)):
                out.append(map_nodes(a, self._arg))
            else:
                out.append(a)
        return tuple(out)

    def _kwargs(self, kwargs: dict) -> dict:
        return {k: self._args((v,))[0] for k, v in kwargs.items()}

    def _bind(self, value: Any, node: Node) -> None:
        if isinstance(value, torch.Tensor):
            self._producer[id(value)] = (node, weakref.ref(value))
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                if _has_tensor(v):
                    item = self._add("call_function", operator.getitem, (node, i), {},
                                     "getitem", v)
                    self._bind(v, item)

    def input(self, value: Any, i: int) -> Any:
        node = self._add("placeholder", f"input_{i}", (), {}, f"input_{i}", value)
        self._bind(value, node)
        return node

    def output(self, value: Any) -> None:
        self.nodes.append(Node("output", "output", (map_nodes(value, self._arg),), {},
                               "output"))

    # leaf modules ----------------------------------------------------------------------
    def _leaf_forward(self, module: nn.Module, name: str, forward: Any) -> Any:
        base = name.replace(".", "_")
        make = _MODULE_SKIP.get(type(module)) if self.skip else None
        fast = make(module) if make is not None else None  # (patch() disables torch functions)

        def leaf_forward(*args: Any, **kwargs: Any) -> Any:
            if self.depth:
                return forward(*args, **kwargs)
            if fast is not None and len(args) == 1 and not kwargs:
                with _no_torch_function():  # (our own bookkeeping is not the model's)
                    out = fast(args[0])
                    if out is not None:
                        self._bind(out, self._add("call_module", name, (self._arg(args[0]),), {},
                                                  base, out))
                        return out
            self.depth = 1
            try:
                out = forward(*args, **kwargs)
            finally:
                self.depth = 0
            with _no_torch_function():
                node = self._add("call_module", name, self._args(args),
                                 self._kwargs(kwargs) if kwargs else {}, base, out)
                self._bind(out, node)
            return out

        return leaf_forward

    def patch(self) -> None:
        """Give each leaf module an instance ``forward`` that records its call."""
        with _no_torch_function():  # reading the layers' constants is not the model's code
            for m, name in self.leaves:
                old = m.__dict__.get("forward", _MISSING)
                self._patched.append((m, old))
                m.__dict__["forward"] = self._leaf_forward(m, name, m.forward)

    def unpatch(self) -> None:
        for m, old in reversed(self._patched):
            if old is _MISSING:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = old
        self._patched.clear()

    # functions ---------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        if self.depth:  # inside a leaf module: only its result matters
            if self.skip:
                fast = _SKIP.get(func)
                if fast is not None:
                    r = fast(args, kwargs)
                    if r is not None:
                        return r
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        objclass = getattr(func, "__objclass__", None)
        getter = None
        if name == "__get__":  # a tensor attribute: x.shape, x.T, ...
            getter = getattr(getattr(func, "__self__", None), "__name__", "?")
        elif name in _VALUE_READS and (objclass is _TensorBase
                                       or getattr(torch.Tensor, name, None) is func):
            raise DataDependent(f"Tensor.{name}() outside a leaf module")
        if self.skip:
            if _needs_values(name, args):
                raise NeedsValues(name)
            fast = _SKIP.get(func)
            if fast is not None:
                r = fast(args, kwargs)
                if r is None:
                    r = func(*args, **kwargs)
                return self._record(func, "call_function", func, args, kwargs,
                                    getattr(func, "__name__", "op"), r)
        out = func(*args, **kwargs)
        if getter is not None:
            if getter == "shape":
                return torch.Size([SizeInt(v) for v in out])
            if not _has_tensor(out):
                return out
            return self._record(func, "call_function", getattr, (args[0], getter), {},
                                "getattr", out)
        if not _has_tensor(out):
            if name in ("size", "numel", "__len__", "nelement"):
                if isinstance(out, int):
                    return SizeInt(out)
                if isinstance(out, tuple):
                    return torch.Size([SizeInt(v) for v in out])
                return out
            if name in _META_READS or not _has_tensor((args, kwargs)):
                return out
        if objclass is _TensorBase:
            if name == "__getitem__":
                return self._record(func, "call_function", operator.getitem, args, kwargs,
                                    "getitem", out)
            if name == "__setitem__":
                return self._record(func, "call_function", operator.setitem, args, kwargs,
                                    "setitem", out)
            return self._record(func, "call_method", name, args, kwargs, name, out)
        if name in _REFLECTED and getattr(torch.Tensor, name, None) is func and len(args) == 2:
            return self._record(func, "call_function", _REFLECTED[name], (args[1], args[0]),
                                kwargs, _REFLECTED[name].__name__, out)
        if getattr(torch.Tensor, name, None) is func:  # a Tensor method written in Python
            return self._record(func, "call_method", name, args, kwargs, name, out)
        return self._record(func, "call_function", func, args, kwargs, name or "op", out)

    def _record(self, func, op: str, target: Any, args: tuple, kwargs: dict, base: str,
                out: Any) -> Any:
        node = self._add(op, target, self._args(args), self._kwargs(kwargs) if kwargs else {},
                         base.strip("_") or "op", out)
        self._bind(out, node)
        return out


def trace_eager(model: nn.Module, inputs: Tuple[Any, ...], modules: Dict[str, nn.Module],
                is_leaf: Callable[[nn.Module, str], bool], param_names: Dict[int, str],
                skip_arithmetic: bool) -> List[Node]:
    """Run ``model(*inputs)`` once (the caller sets eval mode / no_grad) and return the
    recorded nodes.  ``modules``: ``dict(model.named_modules(remove_duplicate=False))``;
    ``is_leaf(module, qualified_name)``: the fx tracer's leaf rule (TorchScript modules
    are leaves too); ``param_names``: id -> qualified name of every parameter and
    buffer.  Raises
    :class:`DataDependent`, :class:`NeedsValues` (only with ``skip_arithmetic``) or
    whatever the forward pass raises."""
    rec = _Recorder(modules, is_leaf, param_names, skip_arithmetic)
    placeholders = tuple(rec.input(t, i) if isinstance(t, torch.Tensor) else t
                         for i, t in enumerate(inputs))
    del placeholders
    rec.patch()
    try:
        with rec:
            out = model(*inputs)
    finally:
        rec.unpatch()
    rec.output(out)
    return rec.nodes
