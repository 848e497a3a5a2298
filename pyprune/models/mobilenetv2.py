"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 CIFAR inputs.

The ImageNet network with two strides changed to keep resolution on small images (as
in the common CIFAR ports): the stem ``conv3x3(3->32)`` and the second stage (24
channels) use stride 1, so the network downsamples 32 -> 16 -> 8 -> 4. Inverted
residual blocks are ``[conv1x1 expand-BN-ReLU6] - depthwise conv3x3-BN-ReLU6 -
conv1x1 project-BN``, with a residual add when the stride is 1 and the input and output
widths agree (torchvision's rule). Then ``conv1x1(->1280)-BN-ReLU6``, global average
pooling and ``Linear(1280, num_classes)`` (no dropout, so the model is deterministic in
training mode too).

``width`` scales every width, rounded to a multiple of 8 as in torchvision; the last
width is ``1280 * max(1, width)``. At width 1 and 10 classes: 2,236,682 parameters and
87,976,448 MACs per image (:func:`pyprune.profile.profile`).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from ._init import init_weights

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2"]

# expansion t, output channels c, repeats n, stride of the first block s
_CIFAR_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 in the ImageNet network
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never going down by more than 10%."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class _ConvBNReLU6(nn.Sequential):
    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block; ``conv`` holds its layers, ``use_res_connect`` is fixed at construction."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_ConvBNReLU6(inp, hidden_dim, kernel_size=1))
        layers.extend([
            _ConvBNReLU6(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ])
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:  # a construction-time constant, not data dependent
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2: ``features`` -> ``avgpool`` -> ``classifier``.

    Args:
        num_classes: number of outputs of ``classifier``.
        width: width multiplier.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        input_channel = _make_divisible(32 * width)
        self.last_channel = _make_divisible(1280 * max(1.0, width))
        features: List[nn.Module] = [_ConvBNReLU6(3, input_channel, stride=1)]
        for t, c, n, s in _CIFAR_SETTING:
            output_channel = _make_divisible(c * width)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(_ConvBNReLU6(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(self.last_channel, num_classes)
        init_weights(self, linear="normal")  # (its Kaiming default gain, leaky_relu a=0, is ReLU's)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenetv2(num_classes: int = 10, width: float = 1.0) -> MobileNetV2:
    """MobileNetV2 for 32x32 inputs (stride-1 stem and second stage)."""
    return MobileNetV2(num_classes=num_classes, width=width)
