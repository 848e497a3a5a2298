"""DenseNet-40 for CIFAR (Huang et al. 2017), the HRank baseline.

``conv3x3(3->24)``, three dense blocks of 12 layers each (every layer is
``BN-ReLU-conv3x3(growth 12)`` and its output is concatenated to its input with
``torch.cat``), transitions ``BN-ReLU-conv1x1-avgpool2`` with no compression
(168 -> 168 and 312 -> 312 channels), then ``BN-ReLU``, global average pooling and
``Linear(456, num_classes)``. Convolutions have no bias.

Counts (10 classes, MACs per 32x32 image, :func:`pyprune.profile.profile`):
1,059,298 parameters in all, of which 1,040,578 are convolution and linear parameters
(HRank counts only those: 1.04M); 282,917,328 MACs (HRank reports 282.00M, 0.3% less,
although its own counter, ``get_flops.py``, gives 282.92M for its model, which has the
same layers).
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from ._init import init_weights

__all__ = ["DenseLayer", "Transition", "DenseNet", "densenet40"]


class DenseLayer(nn.Module):
    """``BN-ReLU-conv3x3`` producing ``growth_rate`` channels, concatenated to the input."""

    def __init__(self, in_channels: int, growth_rate: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(self.relu(self.bn(x)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """``BN-ReLU-conv1x1-avgpool2``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class DenseNet(nn.Module):
    """CIFAR DenseNet with basic (non-bottleneck) layers and optional compression.

    Args:
        depth: ``3n + 4`` (40 gives 12 layers per block).
        growth_rate: channels added by each dense layer.
        compression: transition output = ``floor(in * compression)``.
        num_classes: number of outputs of ``fc``.
    """

    def __init__(self, depth: int = 40, growth_rate: int = 12, compression: float = 1.0,
                 num_classes: int = 10) -> None:
        super().__init__()
        if depth < 7 or (depth - 4) % 3 != 0:
            raise ValueError(f"depth must be 3n+4 with n >= 1, got {depth}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        n = (depth - 4) // 3
        channels = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, channels, kernel_size=3, padding=1, bias=False)
        blocks: List[nn.Module] = []
        for i in range(3):
            layers: List[nn.Module] = []
            for _ in range(n):
                layers.append(DenseLayer(channels, growth_rate))
                channels += growth_rate
            blocks.append(nn.Sequential(*layers))
            if i < 2:
                out_channels = int(channels * compression)
                blocks.append(Transition(channels, out_channels))
                channels = out_channels
        self.dense1, self.trans1, self.dense2, self.trans2, self.dense3 = blocks
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self, linear="zero_bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.dense1(x)
        x = self.trans1(x)
        x = self.dense2(x)
        x = self.trans2(x)
        x = self.dense3(x)
        x = self.relu(self.bn(x))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def densenet40(num_classes: int = 10) -> DenseNet:
    """DenseNet-40 (growth 12, no compression) for CIFAR, the HRank baseline."""
    return DenseNet(depth=40, growth_rate=12, compression=1.0, num_classes=num_classes)
