"""Channel bookkeeping for the dependency graph.

Every channel that a producer (a conv, a linear layer, ...) creates is an *element*
(an int).  Operations that force two channels to be removed together (a residual add,
a depthwise conv, a channel-wise product) unite their elements in a union-find.
Elements created by one producer form a *space*; spaces whose elements are united form
one *group*: a set of coupled channels that is pruned with one list of keep-indices.

Tensors along the channel dimension are described by :class:`ChannelInfo`: index ``j``
along ``dim`` belongs to the element ``elems[j // block]`` (``block > 1`` after flattening
a ``C x H x W`` map, or after a depthwise conv with a channel multiplier).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch.nn as nn

__all__ = ["ChannelInfo", "TensorMember", "AttrMember", "GraphState", "Node", "TensorShape",
           "map_nodes", "module_dict"]


class TensorShape:
    """What the graph records of a traced tensor value (``node.meta["tensor_meta"]``)."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape: Tuple[int, ...], dtype: Any) -> None:
        self.shape = shape
        self.dtype = dtype

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, TensorShape) and (self.shape, self.dtype) == (
            other.shape, other.dtype)

    def __hash__(self) -> int:
        return hash((self.shape, self.dtype))

    def __repr__(self) -> str:
        return f"TensorShape(shape={self.shape}, dtype={self.dtype})"


class Node:
    """One traced op, as the handlers see it (the fields of a ``torch.fx.Node``).

    ``op`` is ``"placeholder"``, ``"get_attr"`` (a parameter or buffer of the model,
    ``target`` its qualified name), ``"constant"`` (a tensor the trace did not produce
    and the model does not own), ``"call_module"`` (``target`` the module's qualified
    name), ``"call_function"`` (``target`` the function), ``"call_method"``
    (``target`` the method name) or ``"output"``.  ``args``/``kwargs`` hold the
    call's arguments with every traced tensor replaced by the node that produced it;
    ``meta["tensor_meta"]`` describes the value (shape and dtype) when it is a tensor
    or a tuple of tensors.
    """

    __slots__ = ("op", "target", "args", "kwargs", "name", "meta")

    def __init__(self, op: str, target: Any, args: tuple, kwargs: dict, name: str,
                 meta: Optional[dict] = None) -> None:
        self.op = op
        self.target = target
        self.args = args
        self.kwargs = kwargs
        self.name = name
        self.meta = {} if meta is None else meta

    @property
    def all_input_nodes(self) -> List["Node"]:
        seen: Dict[int, Node] = {}

        def visit(a: Any) -> Any:
            if isinstance(a, Node):
                seen.setdefault(id(a), a)
            return a

        map_nodes((self.args, self.kwargs), visit)
        return list(seen.values())

    def __repr__(self) -> str:
        return self.name


def module_dict(model: nn.Module) -> Dict[str, nn.Module]:
    """``dict(model.named_modules(remove_duplicate=False))``, same order (pre-order), in
    one plain recursive walk over ``_modules`` (a third of the generator's cost)."""
    out: Dict[str, nn.Module] = {"": model}

    def visit(prefix: str, mod: nn.Module) -> None:
        for name, child in mod._modules.items():
            if child is not None:
                q = prefix + name
                out[q] = child
                if child._modules:
                    visit(q + ".", child)

    visit("", model)
    return out


def map_nodes(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to every leaf of nested tuples / lists / dicts / slices (containers
    are rebuilt as plain ones; a namedtuple keeps its type)."""
    if isinstance(obj, (tuple, list)):
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*(map_nodes(v, fn) for v in obj))
        vals = [map_nodes(v, fn) for v in obj]
        return vals if isinstance(obj, list) else tuple(vals)
    if isinstance(obj, dict):
        return {k: map_nodes(v, fn) for k, v in obj.items()}
    if isinstance(obj, slice):
        return slice(map_nodes(obj.start, fn), map_nodes(obj.stop, fn), map_nodes(obj.step, fn))
    return fn(obj)


@dataclass(frozen=True)
class ChannelInfo:
    """Which channel owns each index of a tensor along its channel dimension."""

    dim: int
    elems: Tuple[int, ...]
    block: int = 1

    @property
    def size(self) -> int:
        return len(self.elems) * self.block


@dataclass
class TensorMember:
    """A parameter or buffer whose slices along ``dim`` follow channels.

    ``role`` is ``"out"`` when the slices produce or scale the channel (conv filters,
    biases, BatchNorm parameters) and ``"in"`` when they consume it (the input side of
    the next conv or linear layer).
    """

    name: str
    dim: int
    block: int
    elems: Tuple[int, ...]
    role: str
    modules: List[str]


@dataclass
class AttrMember:
    """A module attribute equal to ``block * (number of channels kept)``.

    ``index`` is None for an int attribute (``out_channels``); for a tuple attribute
    (``nn.LayerNorm.normalized_shape``) it is the entry that counts the channels, the
    others staying as they are.
    """

    module: str
    attr: str
    block: int
    elems: Tuple[int, ...]
    index: Optional[int] = None


def find_root(parent: List[int], e: int) -> int:
    """Union-find root of e in the forest `parent`, compressing the path on the way."""
    root = e
    while parent[root] != root:
        root = parent[root]
    while parent[e] != root:
        parent[e], e = root, parent[e]
    return root


class GraphState:
    """Mutable state filled by the handlers while walking the traced graph."""

    def __init__(self) -> None:
        self.parent: List[int] = []
        self.spaces: List[Tuple[str, Tuple[int, ...]]] = []
        self.frozen: Dict[int, List[str]] = {}
        self.tensor_members: Dict[Tuple[str, int], TensorMember] = {}
        self.attr_members: Dict[Tuple[str, str], AttrMember] = {}
        self.out_maps: Dict[str, Tuple[List[int], int]] = {}
        self.opaque_tensors: Dict[str, str] = {}

    # union-find -------------------------------------------------------------------
    def find(self, e: int) -> int:
        return find_root(self.parent, e)

    def union(self, a: int, b: int) -> None:
        self.unify((a,), (b,))

    def unify(self, a: Sequence[int], b: Sequence[int]) -> None:
        """Unite ``a[i]`` with ``b[i]`` for every i; the smaller root becomes the root."""
        if len(a) != len(b):  # pragma: no cover - handlers check sizes first
            raise AssertionError("unify: length mismatch")
        parent = self.parent
        for x, y in zip(a, b):  # find with path halving, inline: the hot loop
            while parent[x] != x:
                parent[x] = x = parent[parent[x]]
            while parent[y] != y:
                parent[y] = y = parent[parent[y]]
            if x < y:
                parent[y] = x
            elif y < x:
                parent[x] = y

    # creation ---------------------------------------------------------------------
    def new_space(self, owner: str, n: int, frozen: Optional[str] = None) -> Tuple[int, ...]:
        start = len(self.parent)
        elems = tuple(range(start, start + n))
        self.parent.extend(elems)
        self.spaces.append((owner, elems))
        if frozen is not None:
            self.freeze(elems, frozen)
        return elems

    def freeze(self, elems: Sequence[int], reason: str) -> None:
        for e in elems:
            reasons = self.frozen.setdefault(e, [])
            if reason not in reasons:
                reasons.append(reason)

    def add_tensor(self, name: str, dim: int, block: int, elems: Sequence[int], role: str,
                   module: str) -> None:
        key = (name, dim)
        m = self.tensor_members.get(key)
        if m is None:
            self.tensor_members[key] = TensorMember(name, dim, block, tuple(elems), role, [module])
            return
        if m.block == block and len(m.elems) == len(elems):
            self.unify(m.elems, elems)
        else:  # same tensor slice seen with an incompatible layout: never prune it
            self.freeze(list(m.elems) + list(elems),
                        f"shared tensor {name}: used with incompatible channel layouts (dim {dim})")
        if module not in m.modules:
            m.modules.append(module)

    def add_attr(self, module: str, attr: str, block: int, elems: Sequence[int],
                 index: Optional[int] = None) -> None:
        key = (module, attr)
        m = self.attr_members.get(key)
        if m is None:
            self.attr_members[key] = AttrMember(module, attr, block, tuple(elems), index)
        elif m.block == block and len(m.elems) == len(elems) and m.index == index:
            self.unify(m.elems, elems)
        else:
            self.freeze(list(m.elems) + list(elems),
                        f"shared attribute {module}.{attr}: used with incompatible channel layouts")

    def set_out(self, module: str, elems: Sequence[int], block: int) -> None:
        old = self.out_maps.get(module)
        if old is None:
            self.out_maps[module] = (list(elems), block)
        elif old[1] == block and len(old[0]) == len(elems):
            self.unify(old[0], elems)
        else:
            self.freeze(list(old[0]) + list(elems),
                        f"shared module {module}: called with incompatible channel layouts")
