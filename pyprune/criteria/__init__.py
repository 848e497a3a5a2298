"""Criteria: one score per output channel of each conv / linear layer.

A criterion is a callable ``fn(model, example_inputs, data=None, **options)`` returning
``{qualified module name: 1-D tensor of per-output-channel scores}`` (higher = more
important).  Criteria read the model and never change it.  They live in the
:data:`CRITERIA` registry (a dict name -> callable); add one with :func:`register`::

    @pyprune.criteria.register("taylor")
    def taylor(model, example_inputs, data=None, **options): ...

``pyprune.prune(..., method=name)`` and ``pyprune.scores(..., method=name)`` look the
method up here.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch

__all__ = ["CRITERIA", "Criterion", "register", "get", "compute"]

Criterion = Callable[..., Dict[str, torch.Tensor]]

CRITERIA: Dict[str, Criterion] = {}


def register(name: str) -> Callable[[Criterion], Criterion]:
    """Decorator adding a criterion to :data:`CRITERIA` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"criterion name must be a non-empty string, got {name!r}")

    def deco(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        return fn

    return deco


def get(name: str) -> Criterion:
    """The criterion registered as ``name`` (ValueError listing the supported ones)."""
    try:
        return CRITERIA[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown pruning method {name!r}; supported methods: "
                         f"{', '.join(sorted(CRITERIA))}") from None


def compute(name: str, model: torch.nn.Module, example_inputs: Any, data: Any = None,
            **options: Any) -> Dict[str, torch.Tensor]:
    """Run criterion ``name``; options it does not take raise a clear TypeError."""
    fn = get(name)
    try:
        return fn(model, example_inputs, data=data, **options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise TypeError(f"method {name!r} does not take option(s) {sorted(options)}: {e}") from e
        raise


from . import magnitude, random  # noqa: E402,F401  (registers l1, l2, random)
