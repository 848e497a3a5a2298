"""Weight initialisation shared by the reference models."""
from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module, linear: str) -> None:
    """Initialise ``model`` in place, module by module in ``model.modules()`` order.

    Conv2d: Kaiming normal (fan_out, ReLU gain); BatchNorm: weight 1, bias 0. The
    reference implementations differ only in the Linear layers, so ``linear`` says
    what they get: ``"normal"`` (weight N(0, 0.01^2), bias 0), ``"zero_bias"``
    (PyTorch's default weight, bias 0) or ``"default"`` (left as constructed).
    """
    if linear not in ("normal", "zero_bias", "default"):
        raise ValueError(f"linear must be 'normal', 'zero_bias' or 'default', got {linear!r}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
