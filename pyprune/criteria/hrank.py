"""HRank (Lin et al., "HRank: Filter Pruning using High-Rank Feature Map", CVPR 2020).

The score of a convolution's output channel is the mean rank of its feature maps over
``num_images`` images of ``data``; the highest-rank channels are kept.  All layers are
ranked in one pass (see :func:`pyprune.collect.collect`); which tensor each conv is
ranked on is described in :mod:`pyprune.graph_hooks` (the ReLU after ``conv -> BN``;
in a ResNet basic block, ``conv2`` on the ReLU after the residual add, as in the
reference code lmbxmu/HRank).

The per-layer compress rates of the HRank papers are ``layer_ratios``
(``{conv name: fraction of its channels removed}``); for VGG-16, whose 13 convs are
matched to the list in forward order::

    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    rates = [0.95] + [0.5] * 6 + [0.9] * 4 + [0.8] * 2
    pyprune.prune(model, x, method="hrank", data=loader, layer_ratios=dict(zip(convs, rates)))
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Union

import torch
import torch.nn as nn

from ..collect import collect
from . import register

__all__ = ["hrank"]


@register("hrank", data="required")
def hrank(model: nn.Module, example_inputs: Any = None, data: Any = None, *,
          num_images: Optional[int] = 500,
          layers: Optional[Iterable[Union[str, nn.Module]]] = None, progress: bool = True,
          input_fn: Optional[Callable[[Any], Any]] = None) -> Dict[str, torch.Tensor]:
    """``{conv name: mean feature-map rank of each output channel}`` (float64).

    Args:
        data: iterable of batches (tensors, ``(inputs, targets)`` tuples/lists, a
            ``DataLoader``); required.
        num_images: images used (the last batch is sliced; ``None``: all of ``data``).
        layers: convs to score (names or modules; default every conv).
        progress: tqdm progress bar when the pass takes more than 2 seconds.
        input_fn: ``batch -> input tensor`` for batches of another structure.
    """
    return collect(model, data, ("rank",), example_inputs=example_inputs, layers=layers,
                   num_images=num_images, progress=progress, input_fn=input_fn)["rank"]
