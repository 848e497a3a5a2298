"""Save and load pruned models as plain data (loadable with ``weights_only=True``).

The file is a dict of plain Python data and tensors, no pickled code::

    {"format": "pyprune.pruned", "version": 1,
     "history": [...],   # surgery records: tensor names, dims, blocks, keep-indices
     "widths": {module: {attr: value}},   # final pruned widths
     "keep": {tensor: {dim: indices kept, relative to the original (dense) tensor}},
     "state_dict": {...}}

:func:`load` builds the dense model with ``factory()``, re-applies the recorded surgery
(:func:`pyprune.surgery.replay`) and loads the weights.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Union

import torch
import torch.nn as nn

from .surgery import history, replay

__all__ = ["save", "load", "FORMAT", "VERSION"]

FORMAT = "pyprune.pruned"
VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]


def _compose(records: List[Dict[str, Any]]) -> Dict[str, Dict[int, List[int]]]:
    """Indices kept along each (tensor, dim), relative to the dense tensor."""
    keep: Dict[str, Dict[int, List[int]]] = {}
    for rec in records:
        for t in rec["tensors"]:
            name, dim, block = t["name"], int(t["dim"]), int(t["block"])
            idx = [c * block + j for c in t["keep"] for j in range(block)]
            prev = keep.setdefault(name, {}).get(dim)
            keep[name][dim] = idx if prev is None else [prev[i] for i in idx]
    return keep


def save(model: nn.Module, path: PathLike) -> None:
    """Write ``model``'s pruned structure and weights to ``path``.

    Tensors are cloned first: pruned tensors keep their pre-pruning storage capacity,
    which ``torch.save`` would otherwise write out whole.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    records = history(model)
    widths: Dict[str, Dict[str, int]] = {}
    for rec in records:
        for a in rec["attrs"]:
            widths.setdefault(a["module"], {})[a["attr"]] = int(a["value"])
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "history": records,
        "widths": widths,
        "keep": _compose(records),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    torch.save(payload, path)


def load(path: PathLike, factory: Callable[[], nn.Module], *, strict: bool = True,
         map_location: Any = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save`: ``factory()`` builds the dense model,
    the recorded surgery is re-applied, then the weights are loaded."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pyprune model file (no format {FORMAT!r})")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported pyprune file version {payload.get('version')!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"factory() must return an nn.Module, got {type(model).__name__}")
    replay(model, payload["history"], backup=False)
    model.load_state_dict(payload["state_dict"], strict=strict)
    return model
