"""Shared checks for pruning correctness (used by the graph tests)."""
from __future__ import annotations

import torch
import torch.nn as nn

from pyprune.graph import DependencyGraph
from pyprune.plan import Plan


def zero_removed(model: nn.Module, graph: DependencyGraph, plan: Plan) -> int:
    """Zero the producing slices (conv filters, biases, BN scale/shift...) of every
    channel the plan removes; return how many tensor slices were zeroed."""
    mask = plan.kept_mask()
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    n = 0
    with torch.no_grad():
        for m in graph.tensor_members:
            if m.role != "out" or m.name.endswith("running_var"):
                continue
            removed = ~mask[graph.member_index(m)]
            if not bool(removed.any()):
                continue
            idx = removed.nonzero().flatten()
            if m.block > 1:
                idx = (idx[:, None] * m.block + torch.arange(m.block)).reshape(-1)
            tensors[m.name].index_fill_(m.dim, idx, 0.0)
            n += 1
    return n


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
