"""Reference CIFAR-10 models for pruning experiments.

Plain ``nn.Module`` networks for 32x32 inputs, traceable by ``torch.fx.symbolic_trace``
(no data-dependent control flow) and with every module called exactly once per forward
pass (each ReLU is its own module), so graph tracing and feature-map hooks see one call
per layer. Parameter and MAC counts, and how they compare with published figures, are in
each model's module docstring.

>>> from pyprune.models import get_model, list_models
>>> model = get_model("resnet56", num_classes=10)
"""
from __future__ import annotations

from typing import Callable, Dict, List

from torch import nn

from .densenet import DenseNet, densenet40
from .mobilenetv2 import MobileNetV2, mobilenetv2
from .resnet import CifarResNet, resnet20, resnet32, resnet56, resnet110
from .vgg import VGG, vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn

__all__ = [
    "VGG", "CifarResNet", "DenseNet", "MobileNetV2",
    "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "resnet20", "resnet32", "resnet56", "resnet110",
    "densenet40", "mobilenetv2",
    "get_model", "list_models",
]

_MODELS: Dict[str, Callable[..., nn.Module]] = {
    "vgg11_bn": vgg11_bn,
    "vgg13_bn": vgg13_bn,
    "vgg16_bn": vgg16_bn,
    "vgg19_bn": vgg19_bn,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "densenet40": densenet40,
    "mobilenetv2": mobilenetv2,
}


def list_models() -> List[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(_MODELS)


def get_model(name: str, **kwargs: object) -> nn.Module:
    """Build the model registered as ``name`` (case-insensitive; ``-`` may stand for ``_``).

    Keyword arguments go to the model function (``num_classes``, and ``width`` for the
    VGG and MobileNetV2 models).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: ``name`` is not a known model.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    try:
        factory = _MODELS[key]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None
    return factory(**kwargs)
