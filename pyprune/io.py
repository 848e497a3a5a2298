"""Save and load pruned models as plain data (loadable with ``weights_only=True``).

The file is a dict of plain Python data and tensors, no pickled code::

    {"format": "pyprune.pruned", "version": 1,
     "history": [...],   # surgery records: tensor names, dims, blocks, keep-indices
     "widths": {module: {attr: value}},   # final pruned widths
     "keep": {tensor: {dim: indices kept, relative to the original (dense) tensor}},
     "state_dict": {...},
     "summaries": [...]}  # PruneSummary.to_dict() of every pyprune.prune call

:func:`load` builds the dense model with ``factory()``, re-applies the recorded surgery
(:func:`pyprune.surgery.replay`) and loads the weights.
"""
from __future__ import annotations

import os
import secrets
from typing import Any, Callable, Dict, List, Union

import torch
import torch.nn as nn

from .summary import set_summaries, summaries
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

    Tensors are cloned first: pruned tensors may keep their pre-pruning storage
    capacity (``zero_copy=True``), which ``torch.save`` would otherwise write out whole.
    The file is written atomically: to a temporary file in the same directory, then
    moved over ``path`` with ``os.replace``, so ``path`` never holds a partial file
    (a file-like object is written directly).  The model's
    :class:`~pyprune.summary.PruneSummary` s are saved too (as plain data).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    records = history(model)
    widths: Dict[str, Dict[str, Any]] = {}
    for rec in records:
        for a in rec["attrs"]:
            v = a["value"]
            widths.setdefault(a["module"], {})[a["attr"]] = \
                [int(x) for x in v] if isinstance(v, (list, tuple)) else int(v)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "history": records,
        "widths": widths,
        "keep": _compose(records),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "summaries": [x.to_dict() for x in summaries(model)],
    }
    if hasattr(path, "write"):  # a file-like object
        torch.save(payload, path)
        return
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    # like open(path, "wb"): permissions 0o666 less the umask (mkstemp would give 0o600)
    while True:
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read(path: PathLike, map_location: Any) -> Dict[str, Any]:
    """The payload of a pyprune file; ValueError "not a pyprune file" for anything else."""
    if isinstance(path, (str, bytes, os.PathLike)):
        if os.path.isdir(path):
            raise IsADirectoryError(f"{os.fspath(path)!s} is a directory, not a pyprune file")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {os.fspath(path)!s}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # noqa: BLE001 - torch.load's errors for foreign files vary
        why = ("it holds pickled Python objects, e.g. torch.save(model), not plain data"
               if "weights_only" in str(e) or "Weights only" in str(e)
               else "torch.load cannot read it: not a file written by torch.save")
        raise ValueError(f"{path} is not a pyprune file ({why}); pyprune.load reads files "
                         "written by pyprune.save") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        what = (f"a dict with keys {sorted(map(str, payload))[:5]}"
                if isinstance(payload, dict) else f"a {type(payload).__name__}")
        raise ValueError(f"{path} is not a pyprune file (no format {FORMAT!r}: it holds {what}; "
                         "a plain state_dict loads with model.load_state_dict)")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported pyprune file version {payload.get('version')!r}")
    for key, kind in (("history", list), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise ValueError(f"{path} is not a valid pyprune file: {key!r} is missing or not a "
                             f"{kind.__name__}")
    return payload


def _check_dense(model: nn.Module, payload: Dict[str, Any], path: PathLike) -> None:
    """Name the first tensor of the factory's dense model that cannot be the one the
    file was pruned from (missing, other shape along a dim pruning does not change, or
    too few channels along a pruned dim)."""
    dense = model.state_dict()
    saved = payload["state_dict"]
    keep = payload.get("keep") or {}
    for name, t in saved.items():
        if name not in dense:
            raise ValueError(f"architecture mismatch: the file has tensor {name!r} "
                             f"{tuple(t.shape)}, which the model built by factory lacks")
        d = dense[name]
        if not isinstance(t, torch.Tensor) or not isinstance(d, torch.Tensor):
            continue
        if d.dim() != t.dim():
            raise ValueError(f"architecture mismatch: tensor {name!r} has shape "
                             f"{tuple(d.shape)} in the model built by factory, but "
                             f"{tuple(t.shape)} (pruned) in the file")
        pruned = {int(k): v for k, v in keep.get(name, {}).items()}
        for dim in range(d.dim()):
            if dim in pruned:
                need = max(pruned[dim]) + 1 if pruned[dim] else 0
                if d.shape[dim] < need:
                    raise ValueError(
                        f"architecture mismatch: tensor {name!r} has shape {tuple(d.shape)} in "
                        f"the model built by factory, but the file keeps index {need - 1} of "
                        f"its dim {dim}")
            elif d.shape[dim] != t.shape[dim]:
                raise ValueError(
                    f"architecture mismatch: tensor {name!r} has shape {tuple(d.shape)} in the "
                    f"model built by factory, but {tuple(t.shape)} in the file (dim {dim} is "
                    "not pruned)")
    for name in dense:
        if name not in saved:
            raise ValueError(f"architecture mismatch: the model built by factory has tensor "
                             f"{name!r} {tuple(dense[name].shape)}, which the file lacks")


def load(path: PathLike, factory: Callable[[], nn.Module], *, strict: bool = True,
         map_location: Any = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save`: ``factory()`` builds the dense model,
    the recorded surgery is re-applied, then the weights are loaded.

    Args:
        path: a file written by :func:`save` (read with ``weights_only=True``).
        factory: a callable taking no arguments that returns the dense (unpruned)
            model, built as it was before pruning (``lambda: MyNet(num_classes=10)``).
        strict: check, before changing anything, that the dense model is the one the
            file was pruned from, and load the state dict strictly.
        map_location: as for ``torch.load``.

    Raises:
        ValueError: ``path`` is not a pyprune file (another torch file, a plain
            ``state_dict``, a zip or text file), or the architecture does not match
            (the message names the first tensor that differs and its shapes).
        TypeError: ``factory`` is not a callable returning an ``nn.Module`` (a model
            instance passed instead of a function that builds one, say).
    """
    if isinstance(factory, nn.Module) or not callable(factory):
        what = (f"an instance of {type(factory).__name__}" if isinstance(factory, nn.Module)
                else repr(factory))
        raise TypeError(f"factory must be a callable returning the dense model (e.g. "
                        f"`lambda: MyNet()` or `pyprune.models.resnet56`), got {what}")
    payload = _read(path, map_location)
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"factory must be a callable returning the dense model: factory() "
                        f"returned {type(model).__name__}, not an nn.Module")
    if strict:
        _check_dense(model, payload, path)
    replay(model, payload["history"], backup=False)
    if strict:
        state = model.state_dict()
        for name, t in payload["state_dict"].items():
            if isinstance(t, torch.Tensor) and tuple(state[name].shape) != tuple(t.shape):
                raise ValueError(
                    f"architecture mismatch: after re-applying the recorded pruning, tensor "
                    f"{name!r} has shape {tuple(state[name].shape)} but the file holds "
                    f"{tuple(t.shape)}")
    model.load_state_dict(payload["state_dict"], strict=strict)
    set_summaries(model, list(payload.get("summaries") or []))
    return model
