"""CIFAR ResNets of He et al. (2016), with projection (option B) shortcuts.

``conv3x3(3->16)-BN-ReLU``, three stages of ``n`` BasicBlocks with 16, 32 and 64
channels (``depth = 6n + 2``; the first block of stages 2 and 3 has stride 2), global
average pooling and ``Linear(64, num_classes)``.

Shortcut choice: the paper's CIFAR models use option A (identity with zero-padded
channels, no parameters). These models use option B instead: a ``1x1 conv(stride 2) +
BatchNorm`` projection at the two stage transitions, so that the channel coupling
between a block's output and its shortcut goes through a real, prunable layer. All
other shortcuts are identities (``nn.Identity``). Option B adds 2,752 parameters
(2,560 conv + 192 BatchNorm) and 262,144 MACs per image to every depth.

Counts (all parameters, BatchNorm included, 10 classes, MACs per 32x32 image as
reported by :func:`pyprune.profile.profile`):

=============  ==========  ============  =================================
model          params      MACs          HRank (option A; conv+linear)
=============  ==========  ============  =================================
``resnet20``   272,474     40,813,184    --
``resnet32``   466,906     69,124,736    --
``resnet56``   855,770     125,747,840   0.85M params, 125.49M "FLOPs"
``resnet110``  1,730,714   253,149,824   1.72M params, 252.89M "FLOPs"
=============  ==========  ============  =================================

HRank's figures count convolution and linear weights only (no BatchNorm) and
multiply-accumulates (which it calls FLOPs) of the option-A network; the differences
are the option-B projections and the BatchNorm parameters (see :mod:`pyprune.profile`).
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from ._init import init_weights

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet56", "resnet110"]


class BasicBlock(nn.Module):
    """``conv3x3-BN-ReLU-conv3x3-BN`` plus shortcut, then ReLU.

    ``shortcut`` is ``nn.Identity()`` when shapes match, otherwise a
    ``Sequential(conv1x1(stride), BatchNorm2d)`` projection.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu2(out)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: ``conv1, bn1, relu, layer1..layer3, avgpool, fc``.

    Args:
        depth: total depth, ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: number of outputs of ``fc``.
    """

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        init_weights(self, linear="default")

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers: List[nn.Module] = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 for CIFAR (option-B shortcuts)."""
    return CifarResNet(20, num_classes=num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 for CIFAR (option-B shortcuts)."""
    return CifarResNet(32, num_classes=num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 for CIFAR (option-B shortcuts), the HRank baseline."""
    return CifarResNet(56, num_classes=num_classes)


def resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 for CIFAR (option-B shortcuts)."""
    return CifarResNet(110, num_classes=num_classes)
