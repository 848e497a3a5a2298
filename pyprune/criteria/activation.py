"""Activation-statistics criteria: ``"apoz"`` and ``"activation"``.

* ``"apoz"`` (Hu et al., "Network Trimming", 2016): the Average Percentage of Zeros of
  each channel's post-activation maps over ``data``; the score is ``1 - APoZ`` so that
  channels that are rarely zero are kept and dead channels (always zero after the ReLU)
  go first.
* ``"activation"``: each channel's mean activation over ``data``.

Both come from the same one-pass collector as HRank (:func:`pyprune.collect.collect`),
hooked on the same tensors (see :mod:`pyprune.graph_hooks`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Union

import torch
import torch.nn as nn

from ..collect import collect
from . import register

__all__ = ["apoz", "mean_activation"]


@register("apoz", data="required")
def apoz(model: nn.Module, example_inputs: Any = None, data: Any = None, *,
         num_images: Optional[int] = 500,
         layers: Optional[Iterable[Union[str, nn.Module]]] = None, progress: bool = True,
         input_fn: Optional[Callable[[Any], Any]] = None) -> Dict[str, torch.Tensor]:
    """``{conv name: 1 - APoZ of each output channel}`` (float64 in [0, 1]).

    Options as for :func:`pyprune.criteria.hrank.hrank`.
    """
    z = collect(model, data, ("apoz",), example_inputs=example_inputs, layers=layers,
                num_images=num_images, progress=progress, input_fn=input_fn)["apoz"]
    return {name: 1.0 - v for name, v in z.items()}


@register("activation", data="required")
def mean_activation(model: nn.Module, example_inputs: Any = None, data: Any = None, *,
                    num_images: Optional[int] = 500,
                    layers: Optional[Iterable[Union[str, nn.Module]]] = None,
                    progress: bool = True, input_fn: Optional[Callable[[Any], Any]] = None
                    ) -> Dict[str, torch.Tensor]:
    """``{conv name: mean activation of each output channel}`` (float64).

    Options as for :func:`pyprune.criteria.hrank.hrank`.
    """
    return collect(model, data, ("mean",), example_inputs=example_inputs, layers=layers,
                   num_images=num_images, progress=progress, input_fn=input_fn)["mean"]
