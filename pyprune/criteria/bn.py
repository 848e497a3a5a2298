"""BatchNorm-scale criteria: ``"bn"`` and ``"slim"`` (Network Slimming).

The score of an output channel of a conv (or linear) layer is ``|gamma|``, the absolute
BatchNorm scale applied to that channel (Liu et al., "Learning Efficient Convolutional
Networks through Network Slimming", ICCV 2017).  Both criteria give the same scores;
they differ in how ``pyprune.prune`` turns ``ratio`` into a plan
(:func:`pyprune.criteria.info`):

* ``"bn"``: ``ratio`` removes that fraction of every prunable group (the uniform rule of
  the other criteria); budgets and global thresholds divide each group's scores by
  their mean first (``normalize="mean"``).
* ``"slim"``: ``ratio`` is the paper's *global* fraction: the ``ratio`` lowest-``|gamma|``
  channels of the whole model go, by one threshold on the raw scales
  (``global_threshold=True``, ``normalize=None``).  Use it after sparsity training
  (:func:`pyprune.slimming.slimming`), which drives unimportant scales towards zero
  on one common scale.

Which BatchNorm scores which channel is read from the dependency graph
(:func:`pyprune.graph.build_graph` on ``example_inputs``): a BatchNorm's ``weight``
member (dim 0) lists, for each of its channels, the channel element created by a
producer (``graph.out_maps``), so ``gamma[j]`` scores the producer channel it scales,
through any channel-preserving ops (ReLU, pooling, ``torch.cat``).  A BatchNorm right
after a conv scores that conv's channels one to one.  A channel scaled by several
BatchNorms (a pre-activation DenseNet, where every later layer's BatchNorm scales the
concatenated features) scores the **largest** of its ``|gamma|``: it is removed only if
every BatchNorm that uses it gives it a small scale, which is what removing it
physically (without the reference's channel-selection layers) needs.

Layers none of whose channels are scaled by a BatchNorm (a conv without BatchNorm, the
classifier) get no scores, so a plan leaves their groups whole (``Plan.skipped``:
"no scores"); coupled channels (residual adds) are scored from the members that have
one.  A layer only some of whose channels are scaled is left out too (logged).  A model
with no BatchNorm scaling any layer's output raises ``ValueError``.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..graph import build_graph
from . import register

__all__ = ["bn_scale_scores", "bn", "slim"]

_log = logging.getLogger("pyprune")


def bn_scale_scores(model: nn.Module, example_inputs: Any, *,
                    graph: Any = None) -> Dict[str, torch.Tensor]:
    """``{producer name: |gamma| of the BatchNorm scaling each output channel}``.

    See the module docstring for the mapping.  ``graph``: a
    :class:`~pyprune.graph.DependencyGraph` of ``model`` already built (else it is built
    from ``example_inputs``).  Scores are CPU tensors in the BatchNorm weights' dtype
    (float32 at least); the model is not changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if graph is None:
        if example_inputs is None:
            raise ValueError("example_inputs is required to find which BatchNorm scales "
                             "which conv's channels, got None")
        graph = build_graph(model, example_inputs)
    mods = dict(model.named_modules())
    # BatchNorm weight members of the graph: (module name, weight, member)
    bns: List[Tuple[str, torch.Tensor, Any]] = []
    for mem in graph.tensor_members:
        if mem.role != "out" or mem.dim != 0 or not mem.name.endswith(".weight"):
            continue
        mod_name = mem.name[: -len(".weight")]
        m = mods.get(mod_name)
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or not m.affine:
            continue
        w = m.weight
        if not isinstance(w, torch.Tensor) or w.numel() != len(mem.elems) * mem.block:
            continue
        bns.append((mod_name, w, mem))
    if not bns:
        raise ValueError("method 'bn'/'slim' scores channels by the BatchNorm scales that "
                         "follow them, but no affine BatchNorm of the model scales a traced "
                         "channel")
    dtype = torch.promote_types(torch.float32, bns[0][1].dtype)
    for _, w, _ in bns[1:]:
        dtype = torch.promote_types(dtype, w.dtype)
    # |gamma| of every BatchNorm channel (one device -> host copy), and the element each
    # one scales
    with torch.no_grad():
        gam = torch.cat([w.detach().reshape(-1).to(torch.float64) for _, w, _ in bns])
        gam = gam.abs().cpu().numpy()
    elem = np.concatenate([np.repeat(np.asarray(mem.elems, dtype=np.int64), mem.block)
                           for _, _, mem in bns])
    n_elem = 1 + max(int(elem.max()), max((max(e) for e, _ in graph.out_maps.values() if e),
                                           default=-1))
    best = np.full(n_elem, -1.0)  # -1: no BatchNorm scales this element
    np.maximum.at(best, elem, gam)
    out: Dict[str, torch.Tensor] = {}
    unscored: List[str] = []
    for name, (elems, block) in graph.out_maps.items():
        m = mods.get(name)
        if not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or not elems:
            continue
        s = best[np.asarray(elems, dtype=np.int64)]
        if (s < 0).any():
            if not (s < 0).all():
                _log.info("bn scores: %s left out (only %d of its %d channels are scaled by "
                          "a BatchNorm)", name, int((s >= 0).sum()), s.size)
            unscored.append(name)
            continue
        if block > 1:
            s = np.repeat(s, block)
        out[name] = torch.from_numpy(s).to(dtype)
    if unscored:
        _log.info("bn scores: no BatchNorm scales the outputs of %d layer(s), whose groups "
                  "are scored by their other members or left whole: %s", len(unscored),
                  ", ".join(unscored[:10]) + (" ..." if len(unscored) > 10 else ""))
    return out


@register("bn", data="none", global_threshold=False, normalize="mean")
def bn(model: nn.Module, example_inputs: Any = None, data: Any = None) -> Dict[str, torch.Tensor]:
    """``|gamma|`` of the BatchNorm scaling each output channel (see :mod:`.bn`)."""
    return bn_scale_scores(model, example_inputs)


@register("slim", data="none", global_threshold=True, normalize=None, reduce="mean")
def slim(model: nn.Module, example_inputs: Any = None, data: Any = None) -> Dict[str, torch.Tensor]:
    """Network Slimming: ``|gamma|`` scores under one global threshold (``ratio`` is the
    fraction of all prunable channels removed; see :mod:`.bn`).

    Channels coupled across layers (a residual stream, scaled by one BatchNorm per
    block) are scored by the mean of their ``|gamma|`` (``reduce="mean"``), on the same
    scale as a channel with one BatchNorm, so the one global threshold can prune residual
    streams too (with ``"sum"`` or ``"max"`` they would never fall below it)."""
    return bn_scale_scores(model, example_inputs)
