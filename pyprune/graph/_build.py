"""Build a :class:`DependencyGraph`: trace the model (eagerly, or with torch.fx), then
let a handler interpret each traced op."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch import fx

from ._core import (AttrMember, GraphState, Node, TensorMember, TensorShape, find_root, map_nodes,
                    module_dict)
from ._eager import DataDependent, trace_eager
from .handlers import READS_PARAMETERS, Context, _elementwise, describe_reason, lookup, unknown

__all__ = ["GraphError", "Group", "DependencyGraph", "build_graph", "reason_op"]


def reason_op(reason: str) -> str:
    """The op a reason names (its text before the first ``": "``)."""
    return reason.split(": ", 1)[0]


class GraphError(RuntimeError):
    """The model could not be traced into a channel dependency graph."""


@dataclass
class Group:
    """A set of coupled channels: removed together, with one list of keep-indices.

    ``size`` channels are numbered ``0 .. size-1`` (the order of their first producer);
    a plan keeps a subset of these numbers.  ``reasons`` is non-empty exactly when the
    group is not prunable.
    """

    id: int
    size: int
    offset: int
    producers: List[str] = field(default_factory=list)
    members: List[TensorMember] = field(default_factory=list)
    reasons: List[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.reasons and self.size > 0

    @property
    def modules(self) -> List[str]:
        seen: Dict[str, None] = {}
        for p in self.producers:
            seen.setdefault(p, None)
        for m in self.members:
            for mod in m.modules:
                seen.setdefault(mod, None)
        return list(seen)

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else "unprunable"
        return f"Group(id={self.id}, size={self.size}, {state}, producers={self.producers})"


class _Tracer(fx.Tracer):
    """fx tracer that turns a submodule it cannot trace into an opaque leaf."""

    def __init__(self, leaf_modules: Sequence[Union[str, type]]) -> None:
        super().__init__()
        self._leaf_types = tuple(t for t in leaf_modules if isinstance(t, type))
        self._leaf_names = {t for t in leaf_modules if isinstance(t, str)}
        self.fallbacks: Dict[str, str] = {}

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        if qualified_name in self._leaf_names or (
                self._leaf_types and isinstance(m, self._leaf_types)):
            return True
        return super().is_leaf_module(m, qualified_name)

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m)
        if path == "" or self.is_leaf_module(m, path):
            return super().call_module(m, forward, args, kwargs)
        marker = next(iter(reversed(self.graph.nodes)))
        n_stack = len(self.module_stack)
        num_calls = dict(self.num_calls)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:  # noqa: BLE001 - any tracing failure: fall back
            while len(self.module_stack) > n_stack:
                self.module_stack.popitem(last=True)
            self.num_calls.clear()
            self.num_calls.update(num_calls)
            for n in list(reversed(self.graph.nodes)):
                if n is marker:
                    break
                self.graph.erase_node(n)
            self.fallbacks[path] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            self._leaf_names.add(path)
            return super().call_module(m, forward, args, kwargs)


def _number_channels(state: GraphState) -> Tuple[np.ndarray, np.ndarray, List[int]]:
    """Number the channels: ``(flat, gid, sizes)`` with, per element, its flat channel
    index (``group offset + channel``) and group id, and each group's size.

    A channel is a union-find class of elements; a group is a class of channels that
    share a producer (a space) or are united.  Groups are numbered in the order of
    their first element, channels within a group in the order of their first element
    (elements are numbered space after space, so this is the producers' order).
    """
    n = len(state.parent)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), []
    roots = np.asarray(state.parent, dtype=np.int64)
    while True:  # pointer jumping to the roots
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            break
        roots = nxt
    lens = [len(elems) for _, elems in state.spaces]
    space_of = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
    # spaces joined by a united element pair belong to one group (union-find on spaces)
    a, b = space_of, space_of[roots]
    joined = a != b
    pairs = np.unique(a[joined] * len(lens) + b[joined]).tolist()  # distinct (a, b) pairs
    sparent = list(range(len(lens)))
    for xy in pairs:
        x, y = divmod(xy, len(lens))
        rx, ry = find_root(sparent, x), find_root(sparent, y)
        if rx != ry:
            sparent[max(rx, ry)] = min(rx, ry)
    sroot = np.asarray([find_root(sparent, i) for i in range(len(lens))], dtype=np.int64)
    key = sroot[space_of]  # group key per element
    ukeys, kfirst = np.unique(key, return_index=True)
    gid_of_key = np.empty(len(lens), dtype=np.int64)
    gid_of_key[ukeys[np.argsort(kfirst, kind="stable")]] = np.arange(len(ukeys))
    gid = gid_of_key[key]
    uroots, rfirst = np.unique(roots, return_index=True)
    order = np.argsort(rfirst, kind="stable")
    rs, rg = uroots[order], gid[rfirst[order]]  # channels by first element, and their group
    sizes = np.bincount(rg, minlength=len(ukeys))
    by_group = np.argsort(rg, kind="stable")
    flat_of_root = np.empty(n, dtype=np.int64)
    flat_of_root[rs[by_group]] = np.arange(len(rs), dtype=np.int64)
    return flat_of_root[roots], gid, sizes.tolist()


def _groups_of_seqs(gid_of: np.ndarray, seqs: Sequence[Sequence[int]],
                    n_groups: int) -> Tuple[np.ndarray, List[List[int]]]:
    """``(the sequences' elements concatenated, sorted distinct group ids of each
    sequence)`` for sequences of elements, with one ``np.unique`` for all of them."""
    lens = [len(s) for s in seqs]
    cat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=sum(lens))
    out: List[List[int]] = [[] for _ in seqs]
    if cat.size:
        seg = np.repeat(np.arange(len(seqs), dtype=np.int64), lens)
        for key in np.unique(seg * n_groups + gid_of[cat]).tolist():
            s, g = divmod(key, n_groups)
            out[s].append(g)
    return cat, out


class DependencyGraph:
    """Groups of coupled channels of a model, found by tracing it.

    Build one with :func:`build_graph`.  ``groups`` lists every group; a group is
    prunable unless something the graph does not understand touches its channels,
    in which case :meth:`explain` says why.  ``tracer`` says how the model was traced
    (``"eager"`` or ``"fx"``), ``nodes`` lists the traced ops (shapes in
    ``node.meta["tensor_meta"]``) and ``fx_graph`` is the torch.fx graph when fx traced.
    """

    def __init__(self, model: nn.Module, state: GraphState, fallbacks: Dict[str, str],
                 nodes: List[Node], tracer: str, fx_graph: Optional[fx.Graph] = None,
                 why_fx: Optional[str] = None) -> None:
        self._model_ref = model
        self.nodes = nodes
        self.tracer = tracer
        self.fx_graph = fx_graph
        self.why_fx = why_fx  # why the eager trace was not used, if it was tried
        self.fallbacks = dict(fallbacks)
        self.tensor_members: List[TensorMember] = list(state.tensor_members.values())
        self.attr_members: List[AttrMember] = list(state.attr_members.values())
        flat, gid_of, sizes = _number_channels(state)
        self.groups: List[Group] = []
        offset = 0
        for gid, size in enumerate(sizes):
            self.groups.append(Group(gid, size, offset))
            offset += size
        self.num_channels = offset
        self._flat = torch.from_numpy(flat)
        self.channel_group = torch.from_numpy(np.repeat(np.arange(len(sizes), dtype=np.int64), sizes))
        gid_list = gid_of.tolist()
        # unprunable channels
        for name, why in state.opaque_tensors.items():
            for m in self.tensor_members:
                if m.name == name:
                    state.freeze(m.elems, why)
        for e, reasons in state.frozen.items():
            grp = self.groups[gid_list[e]]
            for r in reasons:
                if r not in grp.reasons:
                    grp.reasons.append(r)
        # The distinct channel layouts of the members (tensor members, then attribute
        # members; members often share one: a conv's filters, its bias, the BatchNorm
        # after it), their elements concatenated, and the groups each layout touches.
        # (Members made from one ChannelInfo share its elems tuple: look those up by
        # identity, and hash the contents of each distinct tuple object once.)
        ids: Dict[Tuple[int, ...], int] = {}
        by_obj: Dict[int, int] = {}
        layout_of: List[int] = []
        for m in itertools.chain(self.tensor_members, self.attr_members):
            el = m.elems
            lid = by_obj.get(id(el))
            if lid is None:
                lid = by_obj[id(el)] = ids.setdefault(tuple(el), len(ids))
            layout_of.append(lid)
        layouts = list(ids)
        cat, layout_groups = _groups_of_seqs(gid_of, layouts, len(sizes))
        self._member_layouts = (layouts, layout_of, torch.from_numpy(flat[cat]))
        self._map_ids = ids  # layout -> map id (see _channel_maps)
        self._maps: Optional[List[torch.Tensor]] = None
        for m, lid in zip(self.tensor_members, layout_of):
            for g in layout_groups[lid]:
                self.groups[g].members.append(m)
        self.out_maps: Dict[str, Tuple[List[int], int]] = dict(state.out_maps)
        outs = list(self.out_maps.items())
        cat, out_groups = _groups_of_seqs(gid_of, [e for _, (e, _) in outs], len(sizes))
        # flat channel index of every producer's channels, and each producer's slice of it
        self._out_flat = flat[cat]
        self._out_slices: Dict[str, Tuple[int, int]] = {}
        at = 0
        for (name, (elems, _)), gs in zip(outs, out_groups):
            self._out_slices[name] = (at, at + len(elems))
            at += len(elems)
            for g in gs:
                if name not in self.groups[g].producers:
                    self.groups[g].producers.append(name)

    # queries ------------------------------------------------------------------------
    @property
    def prunable_groups(self) -> List[Group]:
        return [g for g in self.groups if g.prunable]

    def unprunable_ops(self) -> Dict[str, Dict[str, int]]:
        """What keeps groups whole, per op: ``{op: {"groups": n, "channels": c}}``, most
        channels first.  Every reason starts with the op that caused it (``"torch.max_pool2d:
        ..."``, ``"nn.LayerNorm: ..."``; see :attr:`Group.reasons`); each group counts once
        per op.  Model outputs (never pruned by design) are not counted."""
        out: Dict[str, Dict[str, int]] = {}
        for g in self.groups:
            if g.prunable or g.size == 0:
                continue
            for op in dict.fromkeys(reason_op(r) for r in g.reasons if r != "model output"):
                c = out.setdefault(op, {"groups": 0, "channels": 0})
                c["groups"] += 1
                c["channels"] += g.size
        return dict(sorted(out.items(), key=lambda kv: (-kv[1]["channels"], kv[0])))

    def flat_index(self, elems: Sequence[int], block: int = 1) -> torch.Tensor:
        """Flat channel index (``group.offset + channel``) of each index along a dim."""
        idx = self._flat[torch.as_tensor(list(elems), dtype=torch.int64)]
        if block > 1:
            idx = idx.repeat_interleave(block)
        return idx

    def member_index(self, member: Union[TensorMember, AttrMember]) -> torch.Tensor:
        """Flat channel index of each channel (block) of a member (cached; do not modify)."""
        mid = self.map_id(member)
        return self._channel_maps()[mid]

    def map_id(self, member: Union[TensorMember, AttrMember]) -> int:
        """Members with the same channel layout share one id (a conv's filters, its bias
        and the BatchNorm after it, say): index of :attr:`channel_maps`."""
        maps = self._channel_maps()
        mid = self._map_of_member.get(id(member))
        if mid is None:  # not one of this graph's members: by its channels
            t = tuple(member.elems)
            mid = self._map_ids.get(t)
            if mid is None:
                mid = self._map_ids[t] = len(maps)
                maps.append(self._flat[torch.as_tensor(t, dtype=torch.int64)])
        return mid

    @property
    def channel_maps(self) -> List[torch.Tensor]:
        """Distinct channel layouts of the members (in order of first appearance, tensor
        members then attribute members; then those of other members given to
        :meth:`map_id`): flat channel index per channel (do not modify)."""
        return self._channel_maps()

    def _channel_maps(self) -> List[torch.Tensor]:
        # views of the layouts' flat indices, made on first use (the build does not need
        # them), with each member's map id by identity (members live as long as the graph)
        if self._maps is None:
            layouts, layout_of, flat = self._member_layouts
            self._map_of_member = {id(m): lid for m, lid in zip(
                itertools.chain(self.tensor_members, self.attr_members), layout_of)}
            self._maps = list(torch.split(flat, [len(t) for t in layouts]))
        return self._maps

    def out_index(self, module: str) -> torch.Tensor:
        """Flat channel index of each output channel of ``module`` (a producer)."""
        if module not in self.out_maps:
            raise KeyError(f"{module!r} produces no traced channels; producers: "
                           f"{sorted(self.out_maps)[:10]}...")
        elems, block = self.out_maps[module]
        return self.flat_index(elems, block)

    def groups_of(self, module: Union[str, nn.Module]) -> List[Group]:
        """The groups holding the output channels of ``module``: those it produces (conv,
        linear), or those it scales (BatchNorm, PReLU...) for channel-preserving layers."""
        name = self._name_of(module)
        if name in self.out_maps:
            idx = self.out_index(name)
        else:
            maps = [self.member_index(m) for m in self.tensor_members
                    if m.role == "out" and name in m.modules]
            maps += [self.member_index(a) for a in self.attr_members if a.module == name]
            if not maps:
                return []
            idx = torch.cat(maps)
        gids = torch.unique(self.channel_group[idx]).tolist()
        return [self.groups[g] for g in gids]

    def _name_of(self, module: Union[str, nn.Module]) -> str:
        if isinstance(module, str):
            return module
        for name, m in self._model_ref.named_modules():
            if m is module:
                return name
        raise ValueError("module is not part of the traced model")

    def explain(self, module: Union[str, nn.Module, None] = None, *,
                verbose: bool = False) -> str:
        """Readable description of the groups (of one module's outputs if given): size,
        producers, members (the first 12 unless ``verbose``) and, for a group that is not
        prunable, every reason why."""
        groups = self.groups if module is None else self.groups_of(module)
        lines: List[str] = []
        if module is not None and not groups:
            lines.append(f"{self._name_of(module)}: no traced output channels")
        for g in groups:
            state = "prunable" if g.prunable else "NOT prunable"
            lines.append(f"group {g.id}: {g.size} channels, {state}; "
                         f"producers: {', '.join(g.producers) or '-'}")
            shown = g.members if verbose else g.members[:12]
            mem = ", ".join(f"{m.name}[dim {m.dim}{', block %d' % m.block if m.block > 1 else ''}]"
                            for m in shown)
            if len(shown) < len(g.members):
                mem += f", ... ({len(g.members) - len(shown)} more)"
            if mem:
                lines.append(f"  members: {mem}")
            for r in g.reasons:
                lines.append(f"  reason: {r}")
        if self.why_fx is not None:
            lines.append(f"traced with torch.fx: {self.why_fx}")
        for path, err in self.fallbacks.items():
            lines.append(f"opaque module {path} (fx could not trace it: {err})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"DependencyGraph({len(self.groups)} groups, "
                f"{len(self.prunable_groups)} prunable, {self.num_channels} channels)")


def _as_tuple(example_inputs: Any) -> Tuple[Any, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    raise TypeError("example_inputs must be a Tensor or a tuple of positional inputs, got "
                    f"{type(example_inputs).__name__}")


class _ShapeProp(fx.Interpreter):
    """Record ``node.meta["tensor_meta"]`` (a :class:`TensorShape`) of every tensor value."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        found = False

        def extract(obj: Any) -> Any:
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return TensorShape(tuple(int(v) for v in obj.shape), obj.dtype)
            return obj

        meta = fx.node.map_aggregate(result, extract)
        if found:
            n.meta["tensor_meta"] = meta
        else:
            n.meta.pop("tensor_meta", None)
        return result


#: ``shapes="auto"`` propagates shapes with fake tensors (no arithmetic) above this
#: many parameters, and with one real forward pass below it (cheaper for small models).
FAKE_SHAPES_ABOVE = 50_000_000


def _propagate_shapes(graph: fx.Graph, model: nn.Module, inputs: Tuple[Any, ...],
                      shapes: str) -> None:
    if shapes == "auto":
        n = sum(p.numel() for p in model.parameters())
        shapes = "fake" if n > FAKE_SHAPES_ABOVE else "real"
    if shapes == "fake":
        try:
            from torch._subclasses.fake_tensor import FakeTensorMode

            mode = FakeTensorMode(allow_non_fake_inputs=True)
            with mode:
                fake = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t
                        for t in inputs]
                _ShapeProp(model, graph=graph).run(*fake)
            return
        except Exception:  # noqa: BLE001 - ops without fake kernels: run for real
            pass
    _ShapeProp(model, graph=graph).run(*inputs)


def build_graph(model: nn.Module, example_inputs: Any, *,
                leaf_modules: Iterable[Union[str, type]] = (),
                shapes: str = "auto", tracer: str = "auto") -> DependencyGraph:
    """Trace ``model`` and find its groups of coupled channels.

    ``example_inputs`` (a tensor or a tuple of positional inputs) is run once through
    the model, in eval mode and without gradients; the model is not changed.
    ``leaf_modules`` (classes or qualified names) are not traced into: their channels
    are kept whole.

    ``tracer``: ``"eager"`` records the ops of that one forward pass (a
    ``TorchFunctionMode`` plus recording leaf-module forwards; see
    :mod:`pyprune.graph._eager`);
    ``"fx"`` traces symbolically with torch.fx and then runs the traced graph for the
    shapes; a submodule fx cannot trace becomes an opaque leaf.  ``"auto"`` (default)
    traces eagerly unless the forward pass turns a tensor value into a Python value
    outside a ``torch.nn`` layer (``if x.sum() > 0``, ``x.item()``): such control flow
    can take another path on other data, so fx, which keeps that code whole, is used
    (``graph.why_fx`` says why).  ``graph.tracer`` says which was used.  If the model
    itself cannot be traced, :class:`GraphError` is raised.

    ``shapes``: how tensor shapes are learnt.  ``"real"``: every op is computed.
    ``"fake"``: fake tensors (shapes only, for large models; falls back to a real pass
    if an op has no fake implementation).  ``"auto"``: with the eager tracer,
    convolutions, linear layers and eval-mode BatchNorm are not computed (their
    outputs have the shape torch gives, their values are meaningless; an argument
    the shape formulas do not cover runs the real op, and a data-dependent-shape op
    such as ``nonzero`` met outside a layer makes it trace again with ``"real"``);
    with fx, fake tensors above :data:`FAKE_SHAPES_ABOVE` parameters, a real pass
    below.
    """
    if shapes not in ("auto", "real", "fake"):
        raise ValueError(f"shapes must be 'auto', 'real' or 'fake', got {shapes!r}")
    if tracer not in ("auto", "eager", "fx"):
        raise ValueError(f"tracer must be 'auto', 'eager' or 'fx', got {tracer!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            f"model is a TorchScript module ({type(model).__name__}, from torch.jit.trace or "
            "torch.jit.script): its ops cannot be traced, so no channel could be pruned. "
            "Pass the original nn.Module and script or trace the pruned model afterwards")
    inputs = _as_tuple(example_inputs)
    before = set(model.__dict__)
    try:
        return _build(model, inputs, list(leaf_modules), shapes, tracer)
    finally:
        # fx stores tensor constants met while tracing on the root module
        # (``_tensor_constant0``...): the graph must leave the model as it was
        for key in set(model.__dict__) - before:
            del model.__dict__[key]


def _or_none(trace: Callable[[], List[Node]]) -> Optional[List[Node]]:
    """``trace()``, or None when it fails for any reason but DataDependent."""
    try:
        return trace()
    except DataDependent:
        raise
    except Exception:  # noqa: BLE001 - the caller tries again with real values
        return None


def _run_eager(model: nn.Module, inputs: Tuple[Any, ...], modules: Dict[str, nn.Module],
               is_leaf: Callable[[nn.Module, str], bool], param_names: Dict[int, str],
               shapes: str) -> List[Node]:
    """Eager trace under ``shapes``; raises DataDependent, or GraphError when the model
    does not run on the inputs."""
    def trace(args: Tuple[Any, ...], skip: bool) -> List[Node]:
        return trace_eager(model, args, modules, is_leaf, param_names, skip)

    nodes = None
    if shapes == "auto":  # a NeedsValues op, or skipped arithmetic upset an op: real
        nodes = _or_none(lambda: trace(inputs, True))
    elif shapes == "fake":  # ops without fake kernels: real
        def fake() -> List[Node]:
            from torch._subclasses.fake_tensor import FakeTensorMode

            mode = FakeTensorMode(allow_non_fake_inputs=True)
            with mode:
                return trace(tuple(mode.from_tensor(t) if isinstance(t, torch.Tensor) else t
                                   for t in inputs), False)

        nodes = _or_none(fake)
    if nodes is not None:
        return nodes
    try:
        return trace(inputs, False)
    except DataDependent:
        raise
    except Exception as e:  # noqa: BLE001
        raise GraphError(f"running the model on example_inputs failed: "
                         f"{type(e).__name__}: {e}") from e


def _from_fx(graph: fx.Graph) -> List[Node]:
    ir: Dict[fx.Node, Node] = {}

    def conv(a: Any) -> Any:
        return ir[a] if isinstance(a, fx.Node) else a

    for n in graph.nodes:
        ir[n] = Node(n.op, n.target, map_nodes(tuple(n.args), conv),
                     map_nodes(dict(n.kwargs), conv), n.name, n.meta)
    return list(ir.values())


def _trace_fx(model: nn.Module, inputs: Tuple[Any, ...], tracer: _Tracer,
              shapes: str, why: Optional[str]) -> Tuple[fx.Graph, Dict[str, str]]:
    try:
        graph = tracer.trace(model)
    except Exception as e:  # noqa: BLE001
        first = "" if why is None else (
            f"{type(model).__name__}.forward cannot be traced eagerly ({why}), so ")
        raise GraphError(
            f"{first}pyprune finds coupled channels by torch.fx symbolic tracing, and "
            f"tracing {type(model).__name__}.forward failed: {type(e).__name__}: {e}. "
            "Move the untraceable code into a submodule (it is then kept whole) or pass "
            "leaf_modules=...") from e
    try:
        _propagate_shapes(graph, model, inputs, shapes)
    except Exception as e:  # noqa: BLE001
        raise GraphError(f"running the traced model on example_inputs failed: "
                         f"{type(e).__name__}: {e}") from e
    return graph, tracer.fallbacks


def _build(model: nn.Module, inputs: Tuple[Any, ...], leaf_modules: List[Any],
           shapes: str, tracer: str) -> DependencyGraph:
    # one walk over the modules: every qualified name of every module, parameter and
    # buffer, and each tensor's canonical name (its first, as named_parameters() gives)
    modules: Dict[str, nn.Module] = module_dict(model)
    param_names: Dict[int, str] = {}
    buffer_names: Dict[int, str] = {}
    tensors_by_name: Dict[str, torch.Tensor] = {}
    for mname, mod in modules.items():
        prefix = mname + "." if mname else ""
        for pname, p in mod._parameters.items():
            if p is not None:
                tensors_by_name[prefix + pname] = p
                param_names.setdefault(id(p), prefix + pname)
        for bname, b in mod._buffers.items():
            if b is not None:
                tensors_by_name[prefix + bname] = b
                buffer_names.setdefault(id(b), prefix + bname)
    for k, v in buffer_names.items():
        param_names.setdefault(k, v)
    nodes: Optional[List[Node]] = None
    fx_graph: Optional[fx.Graph] = None
    fallbacks: Dict[str, str] = {}
    why: Optional[str] = None
    modes = {m: m.training for m in modules.values()}
    try:
        if any(modes.values()):
            model.eval()
        with torch.no_grad():
            if tracer != "fx":
                # the leaf rule of a fresh fx tracer (its fallbacks only grow while fx traces)
                try:
                    nodes = _run_eager(model, inputs, modules,
                                       _Tracer(leaf_modules).is_leaf_module, param_names,
                                       shapes)
                except DataDependent as e:
                    why = f"its control flow depends on tensor values: {e}"
                    if tracer == "eager":
                        raise GraphError(
                            f"{type(model).__name__} cannot be traced eagerly: {why}; "
                            "another input could take another path. Use tracer='fx' or "
                            "'auto' (fx keeps such code whole)") from e
            if nodes is None:
                fx_graph, fallbacks = _trace_fx(model, inputs, _Tracer(leaf_modules), shapes,
                                                why)
                nodes = _from_fx(fx_graph)
    finally:
        for m, mode in modes.items():
            if m.training != mode:
                object.__setattr__(m, "training", mode)  # a bool: nn.Module's checks are moot
    state = GraphState()
    ctx = Context(model, state, param_names, modules)
    ctx.fallbacks = dict(fallbacks)
    reads_attrs = any(n.op == "get_attr" for n in nodes)
    for node in nodes:
        if node.op in ("placeholder", "get_attr", "constant"):
            ctx.env[node] = None
            continue
        target = ctx.modules[node.target] if node.op == "call_module" else node.target
        handler = lookup(node, target)
        if handler is unknown and node.op == "call_module":
            why_op = describe_reason(node, ctx, "its parameters are used inside it, which the "
                                                "graph does not understand")
            for pname, p in list(target.named_parameters()) + list(target.named_buffers()):
                if id(p) in param_names:
                    state.opaque_tensors.setdefault(param_names[id(p)], why_op)
        if reads_attrs and handler is not _elementwise and handler not in READS_PARAMETERS:
            for a in node.all_input_nodes:
                if a.op == "get_attr":
                    obj = tensors_by_name.get(str(a.target))
                    if obj is not None and id(obj) in param_names:
                        state.opaque_tensors.setdefault(
                            param_names[id(obj)],
                            describe_reason(node, ctx, f"reads the model's tensor {a.target} "
                                                       "directly"))
        try:
            ctx.env[node] = handler(ctx, node, target)
        except Exception as e:  # noqa: BLE001 - a handler bug must not give a wrong model
            ctx.freeze_all(node, describe_reason(
                node, ctx, f"handler failed ({type(e).__name__}: {e}); kept whole"))
            ctx.env[node] = None
    for path in fallbacks:
        mod = ctx.modules[path]
        for p in list(mod.parameters()) + list(mod.buffers()):
            if id(p) in param_names:
                state.opaque_tensors.setdefault(
                    param_names[id(p)], f"{type(mod).__name__}: tensor used inside it, and "
                                        f"torch.fx could not trace it (at module {path})")
    return DependencyGraph(model, state, fallbacks, nodes, "fx" if fx_graph is not None
                           else "eager", fx_graph, why)
