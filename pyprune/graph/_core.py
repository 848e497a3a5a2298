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
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["ChannelInfo", "TensorMember", "AttrMember", "GraphState"]


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
    elems: List[int]
    role: str
    modules: List[str]


@dataclass
class AttrMember:
    """A module attribute equal to ``block * (number of channels kept)``."""

    module: str
    attr: str
    block: int
    elems: List[int]


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
        self.spaces: List[Tuple[str, List[int]]] = []
        self.frozen: Dict[int, List[str]] = {}
        self.tensor_members: Dict[Tuple[str, int], TensorMember] = {}
        self.attr_members: Dict[Tuple[str, str], AttrMember] = {}
        self.out_maps: Dict[str, Tuple[List[int], int]] = {}
        self.opaque_tensors: Dict[str, str] = {}

    # union-find -------------------------------------------------------------------
    def find(self, e: int) -> int:
        return find_root(self.parent, e)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def unify(self, a: Sequence[int], b: Sequence[int]) -> None:
        if len(a) != len(b):  # pragma: no cover - handlers check sizes first
            raise AssertionError("unify: length mismatch")
        for x, y in zip(a, b):
            self.union(x, y)

    # creation ---------------------------------------------------------------------
    def new_space(self, owner: str, n: int, frozen: Optional[str] = None) -> Tuple[int, ...]:
        start = len(self.parent)
        elems = list(range(start, start + n))
        self.parent.extend(elems)
        self.spaces.append((owner, elems))
        if frozen is not None:
            self.freeze(elems, frozen)
        return tuple(elems)

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
            self.tensor_members[key] = TensorMember(name, dim, block, list(elems), role, [module])
            return
        if m.block == block and len(m.elems) == len(elems):
            self.unify(m.elems, elems)
        else:  # same tensor slice seen with an incompatible layout: never prune it
            self.freeze(list(m.elems) + list(elems),
                        f"tensor {name} (dim {dim}) is used with incompatible channel layouts")
        if module not in m.modules:
            m.modules.append(module)

    def add_attr(self, module: str, attr: str, block: int, elems: Sequence[int]) -> None:
        key = (module, attr)
        m = self.attr_members.get(key)
        if m is None:
            self.attr_members[key] = AttrMember(module, attr, block, list(elems))
        elif m.block == block and len(m.elems) == len(elems):
            self.unify(m.elems, elems)
        else:
            self.freeze(list(m.elems) + list(elems),
                        f"attribute {module}.{attr} is used with incompatible channel layouts")

    def set_out(self, module: str, elems: Sequence[int], block: int) -> None:
        old = self.out_maps.get(module)
        if old is None:
            self.out_maps[module] = (list(elems), block)
        elif old[1] == block and len(old[0]) == len(elems):
            self.unify(old[0], elems)
        else:
            self.freeze(list(old[0]) + list(elems),
                        f"module {module} is called with incompatible channel layouts")
