"""Build a :class:`DependencyGraph` by torch.fx symbolic tracing."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import fx

from ._core import AttrMember, GraphState, TensorMember, find_root
from .handlers import Context, _elementwise, lookup, unknown

__all__ = ["GraphError", "Group", "DependencyGraph", "build_graph"]


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


class DependencyGraph:
    """Groups of coupled channels of a model, found by torch.fx symbolic tracing.

    Build one with :func:`build_graph`.  ``groups`` lists every group; a group is
    prunable unless something the graph does not understand touches its channels,
    in which case :meth:`explain` says why.
    """

    def __init__(self, model: nn.Module, state: GraphState, fallbacks: Dict[str, str],
                 fx_graph: fx.Graph) -> None:
        self._model_ref = model
        self.fx_graph = fx_graph  # the traced torch.fx graph (shapes in node.meta)
        self.fallbacks = dict(fallbacks)
        self.tensor_members: List[TensorMember] = list(state.tensor_members.values())
        self.attr_members: List[AttrMember] = list(state.attr_members.values())
        n = len(state.parent)
        roots = [state.find(e) for e in range(n)]
        # group-level union-find: channels of one producer belong to one group
        gparent = list(roots)

        def gfind(e: int) -> int:
            return find_root(gparent, e)

        for _, elems in state.spaces:
            if elems:
                a = gfind(elems[0])
                for e in elems[1:]:
                    b = gfind(e)
                    if a != b:
                        gparent[b] = a
                        a = gfind(a)
        gid_of_groot: Dict[int, int] = {}
        channels: List[List[int]] = []
        pos_of_root: Dict[int, int] = {}
        for _, elems in state.spaces:
            for e in elems:
                r = roots[e]
                if r in pos_of_root:
                    continue
                g = gfind(e)
                gid = gid_of_groot.setdefault(g, len(channels))
                if gid == len(channels):
                    channels.append([])
                pos_of_root[r] = len(channels[gid])
                channels[gid].append(r)
        self.groups: List[Group] = []
        offset = 0
        for gid, ch in enumerate(channels):
            self.groups.append(Group(gid, len(ch), offset))
            offset += len(ch)
        self.num_channels = offset
        flat = [0] * n
        gid_of = [0] * n
        for e in range(n):
            g = gid_of_groot[gfind(e)]
            gid_of[e] = g
            flat[e] = self.groups[g].offset + pos_of_root[roots[e]]
        self._flat = torch.tensor(flat, dtype=torch.int64)
        self._index_cache: Dict[int, Tuple[Any, int]] = {}
        self._map_ids: Dict[Tuple[int, ...], int] = {}
        self._maps: List[torch.Tensor] = []
        self._gid = torch.tensor(gid_of, dtype=torch.int64)
        self.channel_group = torch.empty(self.num_channels, dtype=torch.int64)
        for g in self.groups:
            self.channel_group[g.offset:g.offset + g.size] = g.id
        # unprunable channels
        for name, why in state.opaque_tensors.items():
            for m in self.tensor_members:
                if m.name == name:
                    state.freeze(m.elems, why)
        for e, reasons in state.frozen.items():
            grp = self.groups[gid_of[e]]
            for r in reasons:
                if r not in grp.reasons:
                    grp.reasons.append(r)
        for m in self.tensor_members:
            for g in sorted({gid_of[e] for e in m.elems}):
                self.groups[g].members.append(m)
        self.out_maps: Dict[str, Tuple[List[int], int]] = dict(state.out_maps)
        for name, (elems, _) in self.out_maps.items():
            for g in sorted({gid_of[e] for e in elems}):
                if name not in self.groups[g].producers:
                    self.groups[g].producers.append(name)

    # queries ------------------------------------------------------------------------
    @property
    def prunable_groups(self) -> List[Group]:
        return [g for g in self.groups if g.prunable]

    def flat_index(self, elems: Sequence[int], block: int = 1) -> torch.Tensor:
        """Flat channel index (``group.offset + channel``) of each index along a dim."""
        idx = self._flat[torch.as_tensor(list(elems), dtype=torch.int64)]
        if block > 1:
            idx = idx.repeat_interleave(block)
        return idx

    def member_index(self, member: Union[TensorMember, AttrMember]) -> torch.Tensor:
        """Flat channel index of each channel (block) of a member (cached; do not modify)."""
        return self._maps[self.map_id(member)]

    def map_id(self, member: Union[TensorMember, AttrMember]) -> int:
        """Members with the same channel layout share one id (a conv's filters, its bias
        and the BatchNorm after it, say): index of :attr:`channel_maps`."""
        key = id(member)
        hit = self._index_cache.get(key)
        if hit is None or hit[0] is not member:
            t = tuple(member.elems)
            mid = self._map_ids.get(t)
            if mid is None:
                mid = self._map_ids[t] = len(self._maps)
                self._maps.append(self._flat[torch.as_tensor(t, dtype=torch.int64)])
            hit = (member, mid)
            self._index_cache[key] = hit
        return hit[1]

    @property
    def channel_maps(self) -> List[torch.Tensor]:
        """Distinct channel layouts of all members: flat channel index per channel."""
        for m in self.tensor_members:
            self.map_id(m)
        for a in self.attr_members:
            self.map_id(a)
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


@dataclass(frozen=True)
class TensorShape:
    """What the graph records of a traced tensor value (``node.meta["tensor_meta"]``)."""

    shape: Tuple[int, ...]
    dtype: torch.dtype


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
                shapes: str = "auto") -> DependencyGraph:
    """Trace ``model`` with torch.fx and find its groups of coupled channels.

    ``example_inputs`` (a tensor or a tuple of positional inputs) is run once through
    the traced graph, in eval mode and without gradients, to learn every tensor's
    shape; the model is not changed.  ``leaf_modules`` (classes or qualified names)
    are not traced into: their channels are kept whole.  A submodule that fx cannot
    trace (data-dependent control flow, ...) is made such an opaque leaf automatically;
    if the model itself cannot be traced, :class:`GraphError` is raised.

    ``shapes``: how tensor shapes are learnt: ``"real"`` (one forward pass),
    ``"fake"`` (fake tensors: shapes only, no arithmetic, for large models; falls back
    to a real pass if an op has no fake implementation) or ``"auto"`` (fake above
    :data:`FAKE_SHAPES_ABOVE` parameters).
    """
    if shapes not in ("auto", "real", "fake"):
        raise ValueError(f"shapes must be 'auto', 'real' or 'fake', got {shapes!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = _as_tuple(example_inputs)
    before = set(model.__dict__)
    try:
        return _build(model, inputs, leaf_modules, shapes)
    finally:
        # fx stores tensor constants met while tracing on the root module
        # (``_tensor_constant0``...): the graph must leave the model as it was
        for key in set(model.__dict__) - before:
            del model.__dict__[key]


def _build(model: nn.Module, inputs: Tuple[Any, ...], leaf_modules: Iterable[Union[str, type]],
           shapes: str) -> DependencyGraph:
    tracer = _Tracer(list(leaf_modules))
    try:
        graph = tracer.trace(model)
    except Exception as e:  # noqa: BLE001
        raise GraphError(
            "pyprune finds coupled channels by torch.fx symbolic tracing, and tracing "
            f"{type(model).__name__}.forward failed: {type(e).__name__}: {e}. Move the "
            "untraceable code into a submodule (it is then kept whole) or pass "
            "leaf_modules=...") from e
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            _propagate_shapes(graph, model, inputs, shapes)
    except Exception as e:  # noqa: BLE001
        raise GraphError(f"running the traced model on example_inputs failed: "
                         f"{type(e).__name__}: {e}") from e
    finally:
        for m, mode in modes.items():
            m.training = mode
    state = GraphState()
    param_names: Dict[int, str] = {}
    for name, p in model.named_parameters():
        param_names.setdefault(id(p), name)
    for name, b in model.named_buffers():
        param_names.setdefault(id(b), name)
    tensors_by_name: Dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors_by_name.update(model.named_buffers(remove_duplicate=False))
    ctx = Context(model, state, param_names)
    ctx.fallbacks = dict(tracer.fallbacks)
    for node in graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            ctx.env[node] = None
            continue
        target = ctx.modules[node.target] if node.op == "call_module" else node.target
        handler = lookup(node, target)
        if handler is unknown and node.op == "call_module":
            why = f"tensor used inside module {node.target}, which the graph does not handle"
            for pname, p in list(target.named_parameters()) + list(target.named_buffers()):
                if id(p) in param_names:
                    state.opaque_tensors.setdefault(param_names[id(p)], why)
        if handler is not _elementwise:
            for a in node.all_input_nodes:
                if a.op == "get_attr":
                    obj = tensors_by_name.get(str(a.target))
                    if obj is not None and id(obj) in param_names:
                        state.opaque_tensors.setdefault(
                            param_names[id(obj)],
                            f"tensor {a.target} is read directly by node {node.name}")
        try:
            ctx.env[node] = handler(ctx, node, target)
        except Exception as e:  # noqa: BLE001 - a handler bug must not give a wrong model
            ctx.freeze_all(node, f"handler for node {node.name} failed "
                                 f"({type(e).__name__}: {e}); its channels are kept whole")
            ctx.env[node] = None
    for path in tracer.fallbacks:
        mod = ctx.modules[path]
        for p in list(mod.parameters()) + list(mod.buffers()):
            if id(p) in param_names:
                state.opaque_tensors.setdefault(
                    param_names[id(p)], f"tensor used inside untraceable module {path}")
    return DependencyGraph(model, state, tracer.fallbacks, graph)
