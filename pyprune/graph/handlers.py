"""Layer handlers: one registry dict from an fx target to a function.

``HANDLERS`` maps

* a module class (for ``call_module`` nodes; looked up along the class's MRO),
* a Python function such as ``torch.cat`` or ``operator.add`` (``call_function``), or
* the string ``"method:<name>"`` (``call_method`` nodes, e.g. ``"method:view"``)

to ``handler(ctx, node, target) -> result`` where ``target`` is the module (for
``call_module``) or the function / method name, and ``result`` is a
:class:`~pyprune.graph._core.ChannelInfo` for a tensor output whose channels are
tracked, ``None`` for anything untracked, or a tuple of those for tuple outputs.

A handler records what it learns in ``ctx.state``: parameters whose slices follow
channels (:meth:`Context.add_tensor`), module attributes equal to a channel count
(:meth:`Context.add_attr`), channels that must be removed together
(``ctx.state.unify``) and channels that must never be removed, with a reason
(:meth:`Context.freeze`).  Anything without a handler freezes the channels it
consumes (:func:`unknown`), so an unsupported op never yields a wrong model.

Third-party code can add entries: ``HANDLERS[MyLayer] = my_handler``.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from ._core import ChannelInfo, GraphState, Node, TensorShape, map_nodes, module_dict
from ._eager import SizeInt as SizeIntLike

__all__ = ["HANDLERS", "Context", "Handler", "lookup", "unknown", "describe_reason",
           "READS_PARAMETERS", "TUPLE_ATTRS"]

Result = Union[ChannelInfo, None, tuple]
Handler = Callable[["Context", Node, Any], Result]


class Context:
    """What a handler sees: the model, the traced node values and the graph state."""

    def __init__(self, model: nn.Module, state: GraphState, param_names: Dict[int, str],
                 modules: Optional[Dict[str, nn.Module]] = None) -> None:
        self.model = model
        self.state = state
        self.env: Dict[Node, Result] = {}
        self._param_names = param_names  # id(tensor) -> canonical qualified name
        self.fallbacks: Dict[str, str] = {}  # untraceable submodules -> fx error
        # every qualified name (shared modules under each of their names)
        self.modules: Dict[str, nn.Module] = (
            module_dict(model) if modules is None else modules)

    # values -----------------------------------------------------------------------
    def info(self, arg: Any) -> Optional[ChannelInfo]:
        if isinstance(arg, Node):
            r = self.env.get(arg)
            return r if isinstance(r, ChannelInfo) else None
        return None

    @staticmethod
    def shape(arg: Any) -> Optional[Tuple[int, ...]]:
        if isinstance(arg, Node):
            meta = arg.meta.get("tensor_meta")
            if type(meta) is TensorShape:  # the tracers record a tuple of ints
                return meta.shape
            if meta is not None and hasattr(meta, "shape"):
                return tuple(int(s) for s in meta.shape)
        return None

    def all_infos(self, obj: Any) -> List[ChannelInfo]:
        out: List[ChannelInfo] = []

        def visit(a: Any) -> None:
            if isinstance(a, Node):
                r = self.env.get(a)
                stack = [r]
                while stack:
                    v = stack.pop()
                    if isinstance(v, ChannelInfo):
                        out.append(v)
                    elif isinstance(v, tuple):
                        stack.extend(v)
            return None

        map_nodes(obj, visit)
        return out

    def freeze(self, info: Optional[ChannelInfo], reason: str) -> None:
        if info is not None:
            self.state.freeze(info.elems, reason)

    def freeze_all(self, node: Node, reason: str) -> None:
        for i in self.all_infos((node.args, node.kwargs)):
            self.freeze(i, reason)

    # parameters -------------------------------------------------------------------
    def tensor_name(self, module: str, attr: str) -> Optional[str]:
        mod = self.modules.get(module)
        if mod is None:
            return None
        t = mod._parameters.get(attr)
        if t is None:
            t = mod._buffers.get(attr)
        if not isinstance(t, torch.Tensor):
            return None
        return self._param_names.get(id(t))

    def add_tensor(self, module: str, attr: str, dim: int, block: int, elems, role: str) -> None:
        name = self.tensor_name(module, attr)
        if name is not None:
            self.state.add_tensor(name, dim, block, elems, role, module)

    def add_attr(self, module: str, attr: str, block: int, elems,
                 index: Optional[int] = None) -> None:
        self.state.add_attr(module, attr, block, elems, index)

    def param_of(self, arg: Any) -> Optional[Tuple[str, torch.Tensor]]:
        """``(canonical name, tensor)`` when ``arg`` is a ``get_attr`` node reading a
        parameter or buffer of the model, else None."""
        if not isinstance(arg, Node) or arg.op != "get_attr":
            return None
        try:
            t = _fetch_attr(self.model, str(arg.target))
        except AttributeError:
            return None
        name = self._param_names.get(id(t)) if isinstance(t, torch.Tensor) else None
        return None if name is None else (name, t)


def _qual(node: Node) -> str:
    return str(node.target)


def _cls(m: Any) -> str:
    """``nn.Conv2d`` for torch.nn classes, the qualified class name for others."""
    t = type(m)
    if getattr(nn, t.__name__, None) is t:
        return f"nn.{t.__name__}"
    mod = getattr(t, "__module__", "") or ""
    return f"{mod}.{t.__qualname__}" if mod else t.__qualname__


def _op(node: Node, ctx: Optional["Context"] = None) -> str:
    """The op a node runs, as a user would write it: ``torch.max_pool2d``,
    ``torch.nn.functional.layer_norm``, ``Tensor.view``, ``operator.add``,
    ``nn.LayerNorm`` (a module: its class; a TorchScript module says so)."""
    t = node.target
    if node.op == "call_module":
        m = ctx.modules.get(str(t)) if ctx is not None else None
        if m is None:
            return f"module {t}"
        if isinstance(m, torch.jit.ScriptModule):
            return f"TorchScript module {m.original_name}"
        return _cls(m)
    if node.op == "call_method":
        return f"Tensor.{t}"
    name = getattr(t, "__name__", None) or str(t)
    if getattr(torch, name, None) is t:
        return f"torch.{name}"
    if getattr(F, name, None) is t:
        return f"torch.nn.functional.{name}"
    if getattr(operator, name, None) is t:
        return f"operator.{name}"
    mod = getattr(t, "__module__", None)
    return f"{mod}.{name}" if mod else name


def describe_reason(node: Node, ctx: Optional["Context"], text: str) -> str:
    """A reason for keeping channels whole: ``"<op>: <text> (at <node or module>)"``, the
    op as a user writes it (``torch.max_pool2d``, ``Tensor.view``, ``nn.LayerNorm``)."""
    return _why(node, text, ctx)


def _why(node: Node, text: str, ctx: Optional["Context"] = None) -> str:
    """A reason: ``"<op>: <text> (at node <name>)"`` (counted per op by
    :meth:`~pyprune.graph.DependencyGraph.unprunable_ops`)."""
    where = f"module {node.target}" if node.op == "call_module" else f"node {node.name}"
    return f"{_op(node, ctx)}: {text} (at {where})"


def _describe(node: Node) -> str:
    t = node.target
    if node.op == "call_module":
        return f"module {t}"
    if node.op == "call_method":
        return f"method .{t}()"
    name = getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or str(t)
    mod = getattr(t, "__module__", None)
    return f"function {mod + '.' if mod else ''}{name}"


def unknown(ctx: Context, node: Node, target: Any) -> Result:
    """Default for anything without a handler: its inputs' channels become unprunable."""
    why = ctx.fallbacks.get(str(node.target)) if node.op == "call_module" else None
    if why is not None:
        ctx.freeze_all(node, f"{_op(node, ctx)}: could not be traced by torch.fx ({why}); "
                             f"kept whole (at module {node.target})")
    elif node.op == "call_module" and isinstance(target, torch.jit.ScriptModule):
        ctx.freeze_all(node, _why(node, "the graph cannot see inside TorchScript; kept whole",
                                  ctx))
    else:
        ctx.freeze_all(node, _why(node, "not understood by the graph", ctx))
    return None


def _arg(node: Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


# --------------------------------------------------------------------------------------
# layers with parameters
# --------------------------------------------------------------------------------------

def _conv(ctx: Context, node: Node, m: nn.modules.conv._ConvNd) -> Result:
    name = _qual(node)
    x = ctx.info(_arg(node, 0, "input"))
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    in_dim_w, out_dim_w = (0, 1) if transposed else (1, 0)
    if x is not None and x.dim != 1:
        ctx.freeze(x, f"{_cls(m)}: channels are not on dim 1 of its input (at module {name})")
        x = None
    g = m.groups
    if g == 1:
        if x is not None:
            ctx.add_tensor(name, "weight", in_dim_w, x.block, x.elems, "in")
            ctx.add_attr(name, "in_channels", x.block, x.elems)
        if name in ctx.state.out_maps:
            out = tuple(ctx.state.out_maps[name][0])
        else:
            out = ctx.state.new_space(name, m.out_channels)
        ctx.add_tensor(name, "weight", out_dim_w, 1, out, "out")
        if m.bias is not None:
            ctx.add_tensor(name, "bias", 0, 1, out, "out")
        ctx.add_attr(name, "out_channels", 1, out)
        ctx.state.set_out(name, out, 1)
        return ChannelInfo(1, out, 1)
    depthwise = g == m.in_channels and m.out_channels % m.in_channels == 0
    if depthwise and x is not None:
        mult = m.out_channels // m.in_channels
        blk = x.block * mult
        # the depthwise conv ties each output channel to its input channel
        if transposed:  # weight [in, mult, k...]
            ctx.add_tensor(name, "weight", 0, x.block, x.elems, "out")
        else:  # weight [out, 1, k...]
            ctx.add_tensor(name, "weight", 0, blk, x.elems, "out")
        if m.bias is not None:
            ctx.add_tensor(name, "bias", 0, blk, x.elems, "out")
        ctx.add_attr(name, "in_channels", x.block, x.elems)
        ctx.add_attr(name, "groups", x.block, x.elems)
        ctx.add_attr(name, "out_channels", blk, x.elems)
        ctx.state.set_out(name, x.elems, blk)
        return ChannelInfo(1, x.elems, blk)
    if not depthwise and (x is None or x.block == 1):
        return _grouped_conv(ctx, name, m, x, transposed)
    if depthwise:
        reason = f"{type(m).__name__}(depthwise): input channels not traced (at module {name})"
    else:
        reason = (f"{type(m).__name__}(groups={g}): grouped conv after a flatten "
                  f"is kept whole (at module {name})")
    ctx.freeze(x, reason)
    if name in ctx.state.out_maps:
        out = tuple(ctx.state.out_maps[name][0])
        ctx.state.freeze(out, reason)
    else:
        out = ctx.state.new_space(name, m.out_channels, frozen=reason)
    ctx.state.set_out(name, out, 1)
    return ChannelInfo(1, out, 1)


def _tie_groups(state: GraphState, elems: Sequence[int], groups: int) -> Tuple[int, ...]:
    """Unite channel ``q * n + j`` with ``j`` for every group q (n = len(elems) // groups),
    so that the same local channels are kept in every group; returns the first group's
    elements, which stand for all of them."""
    n = len(elems) // groups
    first = tuple(elems[:n])
    for q in range(1, groups):
        state.unify(first, elems[q * n:(q + 1) * n])
    return first


def _grouped_conv(ctx: Context, name: str, m: nn.modules.conv._ConvNd,
                  x: Optional[ChannelInfo], transposed: bool) -> Result:
    """A grouped conv (1 < groups, not depthwise): every group loses the same local
    channels, on the input side and on the output side, so ``in_channels`` and
    ``out_channels`` stay multiples of ``groups`` and the weight is sliced along each
    dim with one keep set (its dim 0 or 1 holds one group's worth of channels)."""
    g = m.groups
    in_dim_w, out_dim_w = (0, 1) if transposed else (1, 0)
    if x is not None:
        if len(x.elems) != m.in_channels:
            ctx.freeze(x, f"{type(m).__name__}(groups={g}): input has {len(x.elems)} "
                          f"channels, not {m.in_channels} (at module {name})")
        else:
            first_in = _tie_groups(ctx.state, x.elems, g)
            # weight: [out, in/g, k...] (conv) or [in, out/g, k...] (transposed)
            ctx.add_tensor(name, "weight", in_dim_w, 1, first_in if not transposed
                           else x.elems, "in")
            ctx.add_attr(name, "in_channels", 1, x.elems)
    if name in ctx.state.out_maps:
        out = tuple(ctx.state.out_maps[name][0])
    else:
        out = ctx.state.new_space(name, m.out_channels)
    first_out = _tie_groups(ctx.state, out, g)
    ctx.add_tensor(name, "weight", out_dim_w, 1, out if not transposed else first_out, "out")
    if m.bias is not None:
        ctx.add_tensor(name, "bias", 0, 1, out, "out")
    ctx.add_attr(name, "out_channels", 1, out)
    ctx.state.set_out(name, out, 1)
    return ChannelInfo(1, out, 1)


def _linear(ctx: Context, node: Node, m: nn.Linear) -> Result:
    name = _qual(node)
    src = _arg(node, 0, "input")
    x = ctx.info(src)
    if x is not None:
        in_shape = ctx.shape(src)
        if in_shape is None or x.dim != len(in_shape) - 1:
            ctx.freeze(x, f"{_cls(m)}: applied to a dim that is not the channel dim (at module {name})")
        else:
            ctx.add_tensor(name, "weight", 1, x.block, x.elems, "in")
            ctx.add_attr(name, "in_features", x.block, x.elems)
    tensors = [(t, name) for t in (ctx.tensor_name(name, "weight"),
                                   ctx.tensor_name(name, "bias") if m.bias is not None else None)
               if t is not None]
    return _linear_outputs(ctx, node, name, m.out_features, tensors, name)


def _linear_outputs(ctx: Context, node: Node, key: str, n_out: int,
                    tensors: Sequence[Tuple[str, str]], attr_owner: Optional[str],
                    frozen: Optional[str] = None) -> ChannelInfo:
    """The output channels of a linear layer (``nn.Linear`` or ``F.linear``): one channel
    space per ``key`` (a layer called twice reuses it), the rows of ``tensors``
    (``[(canonical name, owner module)]``) and ``attr_owner.out_features`` follow it;
    ``frozen``: the reason it is kept whole."""
    if key in ctx.state.out_maps:
        out = tuple(ctx.state.out_maps[key][0])
    else:
        out = ctx.state.new_space(key, n_out, frozen)
    for tname, owner in tensors:
        ctx.state.add_tensor(tname, 0, 1, out, "out", owner)
    if attr_owner is not None:
        ctx.add_attr(attr_owner, "out_features", 1, out)
    ctx.state.set_out(key, out, 1)
    shape = ctx.shape(node)
    return ChannelInfo((len(shape) if shape is not None else 2) - 1, out, 1)


def _f_linear(ctx: Context, node: Node, target: Any) -> Result:
    """``F.linear(input, weight, bias)`` as custom layers call it (timm's ``Linear``):
    with a 2-D ``weight`` parameter of the model, its input channels are pruned with the
    channels of ``input``'s last dim, and its output channels form a group of their own,
    like ``nn.Linear``'s (pruned only when the owner is an ``nn.Linear`` whose ``weight``
    and ``bias`` are the ones passed, so the criteria score the right rows)."""
    src = _arg(node, 0, "input")
    x = ctx.info(src)
    why = lambda text: _why(node, text, ctx)  # noqa: E731
    w = ctx.param_of(_arg(node, 1, "weight"))
    b_arg = _arg(node, 2, "bias")
    b = ctx.param_of(b_arg) if b_arg is not None else None
    in_shape = ctx.shape(src)
    if w is None or w[1].dim() != 2 or (b_arg is not None and (b is None or b[1].dim() != 1)):
        if x is not None:
            ctx.freeze(x, why("its weight is not a 2-D parameter of the model"))
        _keep_read_tensors_whole(ctx, node, why)
        return None
    wname, (owner, mod) = w[0], _owner(ctx, w[0])
    if x is not None:
        if in_shape is None or x.dim != len(in_shape) - 1 or w[1].shape[1] != x.size:
            ctx.freeze(x, why("applied to a dim that is not the channel dim"))
        else:
            ctx.state.add_tensor(wname, 1, x.block, x.elems, "in", owner)
            _add_owner_attr(ctx, [owner], "in_features", x)
    whole = isinstance(mod, nn.Linear) and mod.weight is w[1] and (
        (b is None and mod.bias is None) or (b is not None and mod.bias is b[1]))
    tensors = [(wname, owner)] + ([(b[0], owner)] if b is not None else [])
    return _linear_outputs(
        ctx, node, owner if whole else wname, int(w[1].shape[0]), tensors,
        owner if whole else None,
        None if whole else why("its weight is not the weight of an nn.Linear module"))


def _norm(ctx: Context, node: Node, m: nn.Module) -> Result:
    """BatchNorm / InstanceNorm: per-channel parameters and running statistics."""
    name = _qual(node)
    x = ctx.info(_arg(node, 0, "input"))
    if x is None:
        return None
    if x.dim != 1:
        ctx.freeze(x, f"{_cls(m)}: channels are not on dim 1 of its input (at module {name})")
        return None
    for attr in ("weight", "bias", "running_mean", "running_var"):  # those it has
        ctx.add_tensor(name, attr, 0, x.block, x.elems, "out")
    ctx.add_attr(name, "num_features", x.block, x.elems)
    return x


def _prelu(ctx: Context, node: Node, m: nn.PReLU) -> Result:
    name = _qual(node)
    x = ctx.info(node.args[0])
    if x is None or m.num_parameters == 1:
        return x
    if x.dim != 1:
        ctx.freeze(x, f"{_cls(m)}: channels are not on dim 1 of its input (at module {name})")
        return None
    ctx.add_tensor(name, "weight", 0, x.block, x.elems, "out")
    ctx.add_attr(name, "num_parameters", x.block, x.elems)
    return x


#: Whether the surgery in use updates tuple attributes (:class:`AttrMember` with an
#: ``index``, e.g. ``nn.LayerNorm.normalized_shape``).  While False, channels that a
#: LayerNorm normalises are kept whole (with that reason).
TUPLE_ATTRS = True


def _tie_within(ctx: Context, x: ChannelInfo, groups: int) -> None:
    """GroupNorm with ``groups`` groups of contiguous channels: tie channel j of every
    group, so that each group loses the same channels and ``num_groups`` holds."""
    _tie_groups(ctx.state, x.elems, groups)


def _group_norm(ctx: Context, node: Node, m: nn.GroupNorm) -> Result:
    name = _qual(node)
    x = ctx.info(node.args[0] if node.args else node.kwargs.get("input"))
    if x is None:
        return None
    if x.dim != 1 or len(x.elems) * x.block != m.num_channels:
        ctx.freeze(x, f"{_cls(m)}: channels are not on dim 1 of its input (at module {name})")
        return None
    if m.num_groups != m.num_channels:
        if x.block != 1:
            ctx.freeze(x, f"{_cls(m)}: groups of a flattened map (at module {name})")
            return None
        _tie_within(ctx, x, m.num_groups)
    else:
        ctx.add_attr(name, "num_groups", x.block, x.elems)
    if m.affine:
        ctx.add_tensor(name, "weight", 0, x.block, x.elems, "out")
        ctx.add_tensor(name, "bias", 0, x.block, x.elems, "out")
    ctx.add_attr(name, "num_channels", x.block, x.elems)
    return x


def _normalized_dims(ctx: Context, node: Node, x: ChannelInfo, ns: Sequence[Any]
                     ) -> Optional[bool]:
    """Whether a layer norm over the trailing dims ``ns`` normalises the channels
    (True), leaves them alone (False), or mixes them with other dims (None)."""
    shape = ctx.shape(node)
    if shape is None:
        return None
    if x.dim < len(shape) - len(ns):
        return False
    if len(ns) == 1 and x.dim == len(shape) - 1 and x.block == 1:
        return True
    return None


def _layer_norm(ctx: Context, node: Node, m: nn.LayerNorm) -> Result:
    """``nn.LayerNorm(C)`` over channels-last features (ConvNeXt, transformers)."""
    name = _qual(node)
    x = ctx.info(_arg(node, 0, "input"))
    if x is None:
        return None
    ns = tuple(m.normalized_shape)
    over = _normalized_dims(ctx, node, x, ns)
    if over is False:
        return x
    if over is None or ns[0] != x.size:
        ctx.freeze(x, f"{_cls(m)}: normalises the channels together with other dims "
                      f"(at module {name})")
        return None
    if not TUPLE_ATTRS:
        ctx.freeze(x, f"{_cls(m)}: normalized_shape is a tuple attribute the surgery "
                      f"cannot update yet (at module {name})")
        return x
    for attr in ("weight", "bias"):  # those it has
        ctx.add_tensor(name, attr, 0, 1, x.elems, "out")
    ctx.add_attr(name, "normalized_shape", 1, x.elems, index=0)
    return x


def _owner(ctx: Context, pname: str) -> Tuple[str, Optional[nn.Module]]:
    mod = pname.rpartition(".")[0]
    return mod, ctx.modules.get(mod)


def _keep_read_tensors_whole(ctx: Context, node: Node, why: Callable[[str], str]) -> None:
    """Every parameter / buffer ``node`` reads stays whole (a handler of
    :data:`READS_PARAMETERS` that gives up on its own tensors)."""
    for a in node.all_input_nodes:
        q = ctx.param_of(a)
        if q is not None:
            ctx.state.opaque_tensors.setdefault(q[0], why(f"reads {q[0]}"))


def _tensor_args(ctx: Context, node: Node, x: ChannelInfo, spec: Sequence[Tuple[int, str]],
                 why) -> Optional[List[Tuple[str, str]]]:
    """The per-channel tensors a functional norm reads (``spec``: position, keyword):
    ``[(canonical name, owner module)]``, or None (channels frozen) when one is not a
    parameter / buffer of the model of the channels' length."""
    found: List[Tuple[str, str]] = []
    for i, kw in spec:
        a = _arg(node, i, kw)
        if a is None:
            continue
        p = ctx.param_of(a)
        if p is None or p[1].dim() != 1 or p[1].numel() != x.size:
            ctx.freeze(x, why(f"its {kw} is not a per-channel parameter or buffer of the "
                              "model"))
            _keep_read_tensors_whole(ctx, node, why)
            return None
        found.append((p[0], _owner(ctx, p[0])[0]))
    return found


def _add_owner_attr(ctx: Context, owners: Sequence[str], attr: str, x: ChannelInfo) -> None:
    """Keep an int attribute of the module owning the parameters (``num_features`` of a
    custom BatchNorm class) equal to the channel count."""
    for mod_name in dict.fromkeys(owners):
        mod = ctx.modules.get(mod_name)
        v = mod.__dict__.get(attr) if mod is not None else None
        if type(v) is int and v == x.size:
            ctx.add_attr(mod_name, attr, x.block, x.elems)


def _f_batch_norm(ctx: Context, node: Node, target: Any) -> Result:
    """``F.batch_norm`` / ``F.instance_norm`` as custom layers call them: the statistics
    and affine parameters passed in are pruned with the channels."""
    x = ctx.info(_arg(node, 0, "input"))
    if x is None:
        return None
    why = lambda text: _why(node, text, ctx)  # noqa: E731
    if x.dim != 1:
        ctx.freeze(x, why("channels are not on dim 1 of its input"))
        return None
    spec = [(1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")]
    found = _tensor_args(ctx, node, x, spec, why)
    if found is None:
        return None
    for pname, owner in found:
        ctx.state.add_tensor(pname, 0, x.block, x.elems, "out", owner)
    _add_owner_attr(ctx, [o for _, o in found], "num_features", x)
    return x


def _f_group_norm(ctx: Context, node: Node, target: Any) -> Result:
    x = ctx.info(_arg(node, 0, "input"))
    if x is None:
        return None
    why = lambda text: _why(node, text, ctx)  # noqa: E731
    g = _arg(node, 1, "num_groups")
    if x.dim != 1 or not isinstance(g, int) or g < 1 or x.size % g:
        ctx.freeze(x, why("channels are not on dim 1 of its input"))
        return None
    found = _tensor_args(ctx, node, x, [(2, "weight"), (3, "bias")], why)
    if found is None:
        return None
    owners = [o for _, o in found]
    if g == x.size and not isinstance(g, SizeIntLike):
        # one channel per group: num_groups must follow, from its module's attribute
        mods = [ctx.modules.get(o) for o in dict.fromkeys(owners)]
        if len(mods) != 1 or mods[0] is None or mods[0].__dict__.get("num_groups") != g:
            ctx.freeze(x, why(f"hard-codes num_groups={g}, one group per channel"))
            return None
        _add_owner_attr(ctx, owners, "num_groups", x)
    elif g != x.size:
        if x.block != 1:
            ctx.freeze(x, why("groups of a flattened map"))
            return None
        _tie_within(ctx, x, g)
    for pname, owner in found:
        ctx.state.add_tensor(pname, 0, x.block, x.elems, "out", owner)
    _add_owner_attr(ctx, owners, "num_channels", x)
    return x


def _f_layer_norm(ctx: Context, node: Node, target: Any) -> Result:
    x = ctx.info(_arg(node, 0, "input"))
    if x is None:
        return None
    why = lambda text: _why(node, text, ctx)  # noqa: E731
    ns = _arg(node, 1, "normalized_shape")
    ns = (ns,) if isinstance(ns, int) else ns
    if not isinstance(ns, (tuple, list)) or not all(isinstance(v, int) for v in ns):
        ctx.freeze(x, why("normalized_shape is not a tuple of ints"))
        return None
    over = _normalized_dims(ctx, node, x, ns)
    if over is False:
        return x
    if over is None or ns[0] != x.size:
        ctx.freeze(x, why("normalises the channels together with other dims"))
        return None
    found = _tensor_args(ctx, node, x, [(2, "weight"), (3, "bias")], why)
    if found is None:
        return None
    if not isinstance(ns[0], SizeIntLike):
        # the count comes from a module attribute (``self.normalized_shape``)
        owners = list(dict.fromkeys(o for _, o in found))
        mod = ctx.modules.get(owners[0]) if len(owners) == 1 else None
        attr = mod.__dict__.get("normalized_shape") if mod is not None else None
        if not isinstance(attr, tuple) or tuple(attr) != tuple(ns):
            ctx.freeze(x, why(f"hard-codes normalized_shape={tuple(ns)}"))
            return None
        if not TUPLE_ATTRS:
            ctx.freeze(x, why("normalized_shape is a tuple attribute the surgery cannot "
                              "update yet"))
            return x
        ctx.add_attr(owners[0], "normalized_shape", 1, x.elems, index=0)
    for pname, owner in found:
        ctx.state.add_tensor(pname, 0, 1, x.elems, "out", owner)
    return x


# --------------------------------------------------------------------------------------
# channel-preserving ops
# --------------------------------------------------------------------------------------

def _passthrough(ctx: Context, node: Node, target: Any) -> Result:
    """Elementwise unary ops: activations, dropout, identity, dtype casts."""
    src = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
    return ctx.info(src)


def _spatial(ctx: Context, node: Node, target: Any) -> Result:
    """Pooling / resizing: act on the trailing spatial dims, channels stay on dim 1."""
    x = ctx.info(_arg(node, 0, "input"))
    if x is None:
        return None
    shape = ctx.shape(node)
    if x.dim != 1 or shape is None or len(shape) < 3 or shape[1] != x.size:
        ctx.freeze(x, _why(node, "with channels not on dim 1"))
        return None
    return x


def _no_tensor(ctx: Context, node: Node, target: Any) -> Result:
    """Ops that only read metadata (size, dim, shape): nothing to track."""
    if "tensor_meta" in node.meta:  # e.g. getattr(x, "T") returns a tensor
        return unknown(ctx, node, target)
    return None


def _softmax(ctx: Context, node: Node, target: Any) -> Result:
    x = ctx.info(_arg(node, 0, "input"))
    if x is None:
        return None
    if isinstance(target, nn.Module):
        d = getattr(target, "dim", None)
    else:
        d = _arg(node, 1, "dim")
    shape = ctx.shape(node)
    if d is None or shape is None or _norm_dim(int(d), len(shape)) == x.dim:
        ctx.freeze(x, _why(node, "normalises across channels"))
        return None
    return x


def _elementwise(ctx: Context, node: Node, target: Any) -> Result:
    """Broadcasting n-ary ops (add, mul, ...): channels at the same index are coupled."""
    out_shape = ctx.shape(node)
    tensor_args = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, Node)]
    infos = [(a, ctx.info(a)) for a in tensor_args]
    tracked = [(a, i) for a, i in infos if i is not None]
    if not tracked:
        return None
    def reason() -> str:
        return _why(node, "combines channels it cannot align")

    if out_shape is None:
        for _, i in tracked:
            ctx.freeze(i, reason())
        return None
    ndim = len(out_shape)

    def aligned(a: Node, i: ChannelInfo) -> Optional[int]:
        s = ctx.shape(a)
        if s is None:
            return None
        return i.dim + (ndim - len(s))

    # a one-channel tensor broadcast over many channels (e.g. a spatial attention map)
    # is not coupled channel-by-channel: keep it whole and align the others
    kept = []
    for a, i in tracked:
        da = aligned(a, i)
        if da is not None and 0 <= da < ndim and i.size == 1 and out_shape[da] > 1:
            ctx.freeze(i, _why(node, "broadcasts one channel over many"))
        else:
            kept.append((a, i))
    if not kept:
        return None
    tracked = kept
    first_a, first = tracked[0]
    d = aligned(first_a, first)
    ok = d is not None and 0 <= d < ndim and out_shape[d] == first.size
    for a, i in tracked[1:]:
        if not ok:
            break
        ok = aligned(a, i) == d and i.size == first.size and i.block == first.block
    if ok:
        for a, i in tracked[1:]:
            ctx.state.unify(first.elems, i.elems)
        for a, i in infos:
            if i is not None:
                continue
            s = ctx.shape(a)
            if s is None:
                # a non-tensor node (a python scalar computed in the graph)
                continue
            da = d - (ndim - len(s))
            if da < 0 or s[da] == 1:
                continue  # broadcast along the channel dim
            if a.op == "get_attr":
                name = ctx._param_names.get(id(_fetch_attr(ctx.model, str(a.target))))
                if name is not None and s[da] == first.size:
                    ctx.state.add_tensor(name, da, first.block, first.elems, "out", str(a.target))
                    continue
            ok = False
            break
    if not ok:
        for _, i in tracked:
            ctx.freeze(i, reason())
        return None
    return ChannelInfo(d, first.elems, first.block)


def _fetch_attr(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _cat(ctx: Context, node: Node, target: Any) -> Result:
    tensors = _arg(node, 0, "tensors")
    if tensors is None:
        tensors = node.kwargs.get("input")
    d = _arg(node, 1, "dim", 0)
    out_shape = ctx.shape(node)
    reason = _why(node, "on tensors it cannot align")
    untraced = _why(node, "concatenates channels that do not come from a traced layer")
    if not isinstance(tensors, (list, tuple)) or out_shape is None or not isinstance(d, int):
        ctx.freeze_all(node, reason)
        return None
    d = _norm_dim(d, len(out_shape))
    infos = [ctx.info(t) for t in tensors]
    tracked = [i for i in infos if i is not None]
    if not tracked:
        return None
    if all(i.dim == d for i in tracked):
        blk = math.gcd(*(i.block for i in tracked))
        elems: List[int] = []
        for t, i in zip(tensors, infos):
            if i is not None and i.block != blk:
                # one channel of b = k * blk indices becomes k channels of blk indices,
                # new elements tied to it (a shuffled half next to a conv's output)
                k = i.block // blk
                fine = ctx.state.new_space(f"{node.name}:reblocked", len(i.elems) * k)
                ctx.state.unify([e for e in i.elems for _ in range(k)], fine)
                i = ChannelInfo(d, fine, blk)
            if i is None:
                s = ctx.shape(t)
                if s is None or s[d] % blk:
                    ctx.freeze_all(node, reason)
                    return None
                i = ChannelInfo(d, ctx.state.new_space(
                    f"{node.name}:untraced-input", s[d] // blk,
                    frozen=untraced), blk)
            elems.extend(i.elems)
        return ChannelInfo(d, tuple(elems), blk)
    # concatenation along another dim: the channels at one index are coupled
    return _cat_other(ctx, node, tensors, infos, d, reason)


def _cat_other(ctx, node, tensors, infos, d, reason) -> Result:
    tracked = [i for i in infos if i is not None]
    first = tracked[0]
    ok = all(i.dim == first.dim and i.size == first.size and i.block == first.block
             for i in tracked) and all(i is not None for i in infos)
    if not ok:
        ctx.freeze_all(node, reason)
        return None
    for i in tracked[1:]:
        ctx.state.unify(first.elems, i.elems)
    return first


def _reshape_rule(ctx: Context, node: Node, x: ChannelInfo, in_shape, out_shape,
                  literal: Optional[Sequence[Any]] = None, split: bool = True) -> Result:
    """Map the channel dim through a reshape using the traced shapes.

    Channel ``c`` owns a contiguous run of ``q`` elements after the leading dims; the
    reshape keeps channels intact when some output dim starts exactly after the same
    leading dims and each of its indices lies inside one channel's run.
    """
    reason = _why(node, "mixes channels")
    lead = math.prod(in_shape[: x.dim])
    n = len(x.elems)
    rest = math.prod(in_shape[x.dim:])
    if n == 0 or rest % n:
        ctx.freeze(x, reason)
        return None
    q = rest // n
    for dp in range(len(out_shape) + 1):
        if dp == len(out_shape):
            break
        if math.prod(out_shape[:dp]) != lead:
            continue
        if out_shape[dp] == 1 and n * q > 1 and (n > 1 or q > 1):
            continue
        r = math.prod(out_shape[dp + 1:])
        if r == 0 or q % r:
            break
        if literal is not None and dp < len(literal) and type(literal[dp]) is int \
                and literal[dp] != -1:
            ctx.freeze(x, _why(node, f"hard-codes the channel count {literal[dp]}"))
            return None
        return ChannelInfo(dp, x.elems, q // r)
    if split:
        out = _reshape_groups(ctx, node, x, in_shape, out_shape, literal, lead)
        if out is not None:
            return out
    ctx.freeze(x, reason)
    return None


def _reshape_groups(ctx: Context, node: Node, x: ChannelInfo, in_shape, out_shape,
                    literal, lead: int) -> Result:
    """A reshape that splits the channel dim into ``(g, C / g)`` (a channel shuffle's
    first view): channel ``q * C/g + j`` is tied with ``j`` for every q, so every part
    keeps the same channels, and the channels continue on the next dim."""
    n = len(x.elems)
    for dp in range(len(out_shape)):
        if math.prod(out_shape[:dp]) != lead:
            continue
        g = out_shape[dp]
        if g <= 1 or g >= n or n % g or (literal is not None and dp < len(literal)
                                         and not isinstance(literal[dp], int)):
            continue
        m = n // g
        inner = (in_shape[:x.dim] + (g, in_shape[x.dim] // g) + tuple(in_shape[x.dim + 1:]))
        sub = _reshape_rule(ctx, node, ChannelInfo(x.dim + 1, x.elems[:m], x.block),
                            tuple(inner), out_shape, literal, split=False)
        if sub is None:
            return None
        for q in range(1, g):
            ctx.state.unify(x.elems[:m], x.elems[q * m:(q + 1) * m])
        return sub
    return None


def _reshape(ctx: Context, node: Node, target: Any) -> Result:
    src = _arg(node, 0, "input")
    x = ctx.info(src)
    if x is None:
        return None
    in_shape, out_shape = ctx.shape(src), ctx.shape(node)
    if in_shape is None or out_shape is None:
        ctx.freeze(x, _why(node, "without traced shapes"))
        return None
    literal = None
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if name in ("view", "reshape", "expand"):
        sizes = node.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
            sizes = sizes[0]
        if not sizes:
            sizes = node.kwargs.get("shape", node.kwargs.get("size", ()))
        literal = list(sizes)
    if name == "expand":
        # expand keeps every dim of the input (aligned to the right)
        d = x.dim + len(out_shape) - len(in_shape)
        if out_shape[d] != x.size:
            ctx.freeze(x, _why(node, "broadcasts channels"))
            return None
        if literal is not None and d < len(literal) and type(literal[d]) is int \
                and literal[d] != -1:
            ctx.freeze(x, _why(node, "hard-codes the channel count"))
            return None
        return ChannelInfo(d, x.elems, x.block)
    return _reshape_rule(ctx, node, x, in_shape, out_shape, literal)


def _expand_as(ctx: Context, node: Node, target: Any) -> Result:
    src = node.args[0]
    x = ctx.info(src)
    if x is None:
        return None
    in_shape, out_shape = ctx.shape(src), ctx.shape(node)
    if in_shape is None or out_shape is None:
        ctx.freeze(x, _why(node, "without traced shapes"))
        return None
    d = x.dim + len(out_shape) - len(in_shape)
    if out_shape[d] != x.size:
        ctx.freeze(x, _why(node, "broadcasts channels"))
        return None
    other = ctx.info(node.args[1])
    if other is not None and other.dim == d and other.size == x.size and other.block == x.block:
        ctx.state.unify(x.elems, other.elems)
    return ChannelInfo(d, x.elems, x.block)


def _permute(ctx: Context, node: Node, target: Any) -> Result:
    src = _arg(node, 0, "input")
    x = ctx.info(src)
    if x is None:
        return None
    shape = ctx.shape(node)
    if shape is None:
        ctx.freeze(x, _why(node, "without traced shapes"))
        return None
    ndim = len(shape)
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if name == "permute":
        dims = node.args[1:] if len(node.args) > 1 else node.kwargs.get("dims", ())
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        if not all(isinstance(v, int) for v in dims):
            ctx.freeze(x, _why(node, "with traced dims"))
            return None
        perm = [_norm_dim(v, ndim) for v in dims]
        return ChannelInfo(perm.index(x.dim), x.elems, x.block)
    if name == "t":
        a, b = 0, 1
    else:
        a, b = _arg(node, 1, "dim0"), _arg(node, 2, "dim1")
        if not isinstance(a, int) or not isinstance(b, int):
            ctx.freeze(x, _why(node, "with traced dims"))
            return None
        a, b = _norm_dim(a, ndim), _norm_dim(b, ndim)
    d = b if x.dim == a else a if x.dim == b else x.dim
    return ChannelInfo(d, x.elems, x.block)


def _reduce(ctx: Context, node: Node, target: Any) -> Result:
    src = _arg(node, 0, "input")
    x = ctx.info(src)
    if x is None:
        return None
    in_shape = ctx.shape(src)
    d = _arg(node, 1, "dim")
    if isinstance(d, Node):  # torch.max(x, y): elementwise
        return _elementwise(ctx, node, target)
    keep = bool(_arg(node, 2, "keepdim", False))
    reason = _why(node, "reduces over channels")
    if d is None or in_shape is None:
        ctx.freeze(x, reason)
        return None
    dims = [d] if isinstance(d, int) else list(d)
    if not all(isinstance(v, int) for v in dims):
        ctx.freeze(x, reason)
        return None
    dims = [_norm_dim(v, len(in_shape)) for v in dims]
    if x.dim in dims:
        ctx.freeze(x, reason)
        return None
    nd = x.dim if keep else x.dim - sum(1 for v in dims if v < x.dim)
    out = ChannelInfo(nd, x.elems, x.block)
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if name in ("max", "min") and isinstance(d, int):
        return (out, out)
    return out


def _whole_slice(it: slice, n: int) -> bool:
    """Whether ``it`` keeps all ``n`` channels, and keeps all of any fewer after pruning.

    ``x[:, :k]`` with ``k >= n`` (GhostNet's ``cat([x1, x2], 1)[:, :out_chs]`` when the
    concatenation already has ``out_chs`` channels) is the identity now and stays one when
    channels are removed; a ``k < n``, a negative bound or a step selects channels.
    """
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return ((it.start is None or (is_int(it.start) and it.start == 0))
            and (it.step is None or (is_int(it.step) and it.step == 1))
            and (it.stop is None or (is_int(it.stop) and it.stop >= n)))


def _getitem(ctx: Context, node: Node, target: Any) -> Result:
    src, idx = node.args[0], node.args[1]
    r = ctx.env.get(src) if isinstance(src, Node) else None
    if isinstance(r, tuple):
        if isinstance(idx, int) and -len(r) <= idx < len(r):
            return r[idx]
        for i in ctx.all_infos(src):
            ctx.freeze(i, _why(node, "with an unsupported index"))
        return None
    if not isinstance(r, ChannelInfo):
        return None
    x = r
    in_shape = ctx.shape(src)
    reason = _why(node, "selects channels")
    if in_shape is None:
        ctx.freeze(x, reason)
        return None
    items = idx if isinstance(idx, tuple) else (idx,)
    n_real = sum(1 for it in items if it is not None and it is not Ellipsis)
    expanded: List[Any] = []
    for it in items:
        if it is Ellipsis:
            expanded.extend([slice(None)] * (len(in_shape) - n_real))
        else:
            expanded.append(it)
    in_d = out_d = 0
    new_dim = None
    for it in expanded:
        if it is None:
            out_d += 1
        elif isinstance(it, int):
            if in_d == x.dim:
                ctx.freeze(x, reason)
                return None
            in_d += 1
        elif isinstance(it, slice):
            if in_d == x.dim:
                if not _whole_slice(it, in_shape[in_d]):
                    ctx.freeze(x, reason)
                    return None
                new_dim = out_d
            in_d += 1
            out_d += 1
        else:
            ctx.freeze(x, reason)
            return None
    if new_dim is None:
        if in_d > x.dim:  # pragma: no cover - handled above
            ctx.freeze(x, reason)
            return None
        new_dim = out_d + (x.dim - in_d)
    return ChannelInfo(new_dim, x.elems, x.block)


def _split(ctx: Context, node: Node, target: Any) -> Result:
    src = node.args[0] if node.args else node.kwargs.get("tensor", node.kwargs.get("input"))
    x = ctx.info(src)
    if x is None:
        return None
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    d = _arg(node, 2 if name in ("split", "chunk", "tensor_split") else 1, "dim", 0)
    in_shape = ctx.shape(src)
    meta = node.meta.get("tensor_meta")
    n_out = len(meta) if isinstance(meta, (tuple, list)) else None
    if not isinstance(d, int) or in_shape is None or n_out is None:
        ctx.freeze(x, _why(node, "with untraced arguments"))
        return None
    d = _norm_dim(d, len(in_shape))
    if d == x.dim:
        sizes = [int(m.shape[d]) for m in meta]
        n, k = len(x.elems), len(sizes)
        by_count = name == "chunk" or (name == "tensor_split" and isinstance(
            _arg(node, 1, "indices_or_sections"), int))
        if by_count and k > 1 and n % k == 0 and sizes == [n // k * x.block] * k:
            # chunk(k): k equal pieces of whatever is left, so piece i keeps the same
            # local channels as piece 0 (tied), and the pieces stay equal
            m = n // k
            pieces = [x.elems[i * m:(i + 1) * m] for i in range(k)]
            for piece in pieces[1:]:
                ctx.state.unify(pieces[0], piece)
            return tuple(ChannelInfo(d, piece, x.block) for piece in pieces)
        # split sizes are fixed numbers: channels on both sides stay as they are
        ctx.freeze(x, _why(node, "splits channels at fixed sizes"))
        outs = []
        off = 0
        for m in meta:
            size = int(m.shape[d])
            if off % x.block or size % x.block:
                return tuple(None for _ in meta)
            outs.append(ChannelInfo(d, x.elems[off // x.block:(off + size) // x.block], x.block))
            off += size
        return tuple(outs)
    return tuple(x for _ in range(n_out))


def _output(ctx: Context, node: Node, target: Any) -> Result:
    ctx.freeze_all(node, "model output")
    return None


# --------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------

HANDLERS: Dict[Any, Handler] = {}


def _register(keys: Sequence[Any], fn: Handler) -> None:
    for k in keys:
        HANDLERS[k] = fn


_register([nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
           nn.ConvTranspose3d], _conv)
_register([nn.Linear], _linear)
_register([nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
           nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d], _norm)
_register([nn.PReLU], _prelu)
_register([nn.GroupNorm], _group_norm)
_register([nn.LayerNorm], _layer_norm)
_register([F.batch_norm, F.instance_norm], _f_batch_norm)
_register([F.linear], _f_linear)
_register([F.group_norm], _f_group_norm)
_register([F.layer_norm], _f_layer_norm)

#: Handlers that register the parameters / buffers they read themselves (every other
#: handler's get_attr inputs are kept whole).
READS_PARAMETERS = frozenset({_f_batch_norm, _f_group_norm, _f_layer_norm, _f_linear})

_UNARY_MODULES = [nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
                  nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid,
                  nn.Tanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                  nn.Dropout3d, nn.AlphaDropout, nn.LogSigmoid, nn.Tanhshrink,
                  nn.Softsign, nn.Threshold]
_register(_UNARY_MODULES, _passthrough)
_register([nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
           nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
           nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d,
           nn.LPPool2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
           nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ConstantPad2d],
          _spatial)
_register([nn.Flatten], _reshape)  # nn.Unflatten hard-codes sizes: unknown
_register([nn.Softmax, nn.LogSoftmax, nn.Softmin], _softmax)

_UNARY_FUNCS = [F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu,
                F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh,
                F.softplus, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.exp, torch.abs,
                torch.neg, torch.sqrt, torch.square, torch.clamp, torch.clip, torch.sign,
                operator.neg, operator.pos, torch.nn.functional.threshold]
_register(_UNARY_FUNCS, _passthrough)
_UNARY_METHODS = ["relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs",
                  "neg", "sqrt", "square", "clamp", "clamp_", "clip", "clamp_min",
                  "clamp_max", "sign", "contiguous", "float", "double", "half", "bfloat16",
                  "to", "type_as", "detach", "clone", "requires_grad_", "cpu", "cuda",
                  "__neg__"]
_register([f"method:{m}" for m in _UNARY_METHODS], _passthrough)
_register([torch.pow], _elementwise)

_BINARY = [operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd,
           operator.isub, operator.imul, operator.itruediv, operator.pow, torch.add,
           torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.where,
           torch.true_divide, torch.addcmul]
_register(_BINARY, _elementwise)
_register([f"method:{m}" for m in ["add", "add_", "sub", "sub_", "mul", "mul_", "div",
                                   "div_", "maximum", "minimum", "addcmul", "addcmul_",
                                   "masked_fill", "masked_fill_", "pow", "pow_"]],
          _elementwise)

_register([F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
           F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
           F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
           F.interpolate, F.upsample, F.lp_pool2d, F.lp_pool1d, F.pad, F.upsample_nearest,
           F.upsample_bilinear]
          + [getattr(torch, n) for n in ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d",
                                         "adaptive_avg_pool1d", "adaptive_max_pool1d",
                                         "constant_pad_nd") if hasattr(torch, n)],
          _spatial)
_register([torch.cat, torch.concat, torch.concatenate], _cat)
_register([torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze],
          _reshape)
_register([f"method:{m}" for m in ["view", "reshape", "flatten", "squeeze", "unsqueeze",
                                   "expand"]],
          _reshape)
HANDLERS["method:expand_as"] = _expand_as
_register([torch.permute, torch.transpose, torch.t, "method:permute", "method:transpose",
           "method:t"], _permute)
_register([torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var,
           torch.max, torch.min, "method:mean", "method:sum", "method:amax", "method:amin",
           "method:std", "method:var", "method:max", "method:min"], _reduce)
_register([operator.getitem], _getitem)
_register([torch.split, torch.chunk, torch.tensor_split, "method:split", "method:chunk",
           "method:tensor_split"], _split)
_register([F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "method:softmax",
           "method:log_softmax"], _softmax)
_register(["method:size", "method:dim", "method:numel", "method:ndimension", getattr,
           len, "method:__len__"], _no_tensor)
HANDLERS["output"] = _output


def lookup(node: Node, target: Any) -> Handler:
    """The handler for one node (``unknown`` when none is registered)."""
    if node.op == "call_module":
        # exact class only: a subclass may override forward() (register it explicitly)
        return HANDLERS.get(type(target), unknown)
    if node.op == "call_method":
        return HANDLERS.get(f"method:{target}", unknown)
    if node.op == "output":
        return HANDLERS["output"]
    try:
        return HANDLERS.get(target, unknown)
    except TypeError:  # unhashable target
        return unknown
