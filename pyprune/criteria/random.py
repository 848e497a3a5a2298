"""``"random"``: uniform random scores (a baseline), reproducible from ``seed``."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn as nn

from . import register

__all__ = ["random_scores"]


@register("random")
def random_scores(model: nn.Module, example_inputs: Any = None, data: Any = None,
                  seed: int = 0) -> Dict[str, torch.Tensor]:
    """A uniform random score per output channel of every conv / linear layer."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    gen = torch.Generator().manual_seed(seed)
    out: Dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            n = m.out_channels
        elif isinstance(m, nn.Linear):
            n = m.out_features
        else:
            continue
        out[name] = torch.rand(n, generator=gen, dtype=torch.float64)
    return out
