"""CIFAR VGG with batch normalisation, as used by HRank and Network Slimming.

Architecture (for 32x32 inputs): stacks of ``Conv3x3(bias=False)-BatchNorm2d-ReLU``
separated by ``MaxPool2d(2)`` following the configurations below, a global average
pool (the feature map is 2x2 after four pools, as in HRank's ``AvgPool2d(2)``), and the
HRank classifier ``Linear(C, 512)-BatchNorm1d-ReLU-Linear(512, num_classes)``.

Convolutions carry no bias: each one is followed by a BatchNorm whose shift makes a
bias redundant (Network Slimming does the same; HRank's code keeps a bias, which adds
4,224 parameters to VGG-16).

``width`` multiplies every convolution width (``round(c * width)``, at least 1); the
hidden width of the classifier stays 512. Parameter counts (all parameters, BatchNorm
included, 10 classes, as reported by :func:`pyprune.profile.profile`):

=========================  ============  ================
model                      params        MACs per image
=========================  ============  ================
``vgg11_bn()``             9,492,042     153,031,680
``vgg13_bn()``             9,676,746     228,529,152
``vgg16_bn()``             14,987,722    313,463,808
``vgg19_bn()``             20,298,698    398,398,464
``vgg16_bn(width=4)``      236,435,722   4,990,964,736
=========================  ============  ================

HRank reports VGG-16 at 14.98M parameters and 313.73M "FLOPs" (multiply-accumulates of
convolutions and linear layers, BatchNorm parameters not counted); see
:mod:`pyprune.profile` for how these figures compare. ``vgg16_bn(width=4)`` is the
"VGG-16x4" benchmark model: 236.44M parameters, of which 235.38M are in the feature
extractor (convolutions 235,346,688 + BatchNorm 33,792) and 1.06M in the classifier.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Sequence, Union

import torch
from torch import nn

from ._init import init_weights

__all__ = ["VGG", "VGG_CONFIGS", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]

_Cfg = Sequence[Union[int, str]]

#: Layer configurations: an int is a conv3x3-BN-ReLU of that width, "M" a 2x2 max pool.
VGG_CONFIGS: Dict[str, List[Union[int, str]]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512],
}


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class VGG(nn.Module):
    """VGG-BN for CIFAR: ``features`` -> ``avgpool`` -> ``classifier``.

    Args:
        cfg: layer configuration (ints are conv widths, ``"M"`` is a max pool).
        num_classes: number of outputs of the last linear layer.
        width: multiplier applied to every convolution width.
        hidden: width of the hidden classifier layer.
    """

    def __init__(self, cfg: _Cfg, num_classes: int = 10, width: float = 1.0,
                 hidden: int = 512) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        layers: List[nn.Module] = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            elif isinstance(v, int):
                out_channels = _scaled(v, width)
                layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False))
                layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                in_channels = out_channels
            else:
                raise ValueError(f"bad VGG config entry {v!r}")
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(in_channels, hidden)),
            ("norm1", nn.BatchNorm1d(hidden)),
            ("relu1", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, num_classes)),
        ]))
        init_weights(self, linear="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def vgg11_bn(num_classes: int = 10, width: float = 1.0) -> VGG:
    """VGG-11 with BatchNorm for CIFAR (9.49M parameters at width 1)."""
    return VGG(VGG_CONFIGS["vgg11"], num_classes=num_classes, width=width)


def vgg13_bn(num_classes: int = 10, width: float = 1.0) -> VGG:
    """VGG-13 with BatchNorm for CIFAR (9.68M parameters at width 1)."""
    return VGG(VGG_CONFIGS["vgg13"], num_classes=num_classes, width=width)


def vgg16_bn(num_classes: int = 10, width: float = 1.0) -> VGG:
    """VGG-16 with BatchNorm for CIFAR, the HRank baseline.

    14,987,722 parameters and 313,463,808 MACs per 32x32 image at width 1 (HRank:
    14.98M / 313.73M). ``width=4`` gives "VGG-16x4": 236,435,722 parameters and
    4,990,964,736 MACs per image.
    """
    return VGG(VGG_CONFIGS["vgg16"], num_classes=num_classes, width=width)


def vgg19_bn(num_classes: int = 10, width: float = 1.0) -> VGG:
    """VGG-19 with BatchNorm for CIFAR (20.30M parameters at width 1)."""
    return VGG(VGG_CONFIGS["vgg19"], num_classes=num_classes, width=width)
