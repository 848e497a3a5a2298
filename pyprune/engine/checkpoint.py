"""Model specs, self-describing model files and atomic writes.

A model file written by the engine is a :func:`pyprune.save` file (loadable with
``pyprune.load(path, factory)``) with one more key, ``"engine_spec"``: the plain-data
recipe of the dense model (model name, constructor arguments, number of classes, input
size, normalisation).  :func:`load_model` rebuilds the model from the file alone.
"""
from __future__ import annotations

import copy
import io
import os
import tempfile
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

import pyprune

from .errors import UsageError

__all__ = ["build_model", "model_spec", "save_model", "load_model", "atomic_save",
           "model_to_tensor", "model_from_tensor", "SPEC_KEY"]

SPEC_KEY = "engine_spec"


def _tv_models() -> Any:
    try:
        import torchvision.models as tvm
        return tvm
    except Exception as e:  # noqa: BLE001 - a CUDA torchvision wheel against a CPU torch
        first = e
    # a source checkout carries a shim (benchmarks/_tv.py) that imports the pure-Python models
    shim_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(pyprune.__file__))),
                             "benchmarks", "_tv.py")
    if os.path.isfile(shim_path):
        try:
            import importlib.util
            spec = importlib.util.spec_from_file_location("_pyprune_tv_shim", shim_path)
            mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(mod)  # type: ignore[union-attr]
            tv, _how = mod.load_torchvision()
            if tv is not None:
                return tv.models
        except Exception:  # noqa: BLE001
            pass
    raise UsageError(f"torchvision models are not available here (import torchvision failed: {first})")


def build_model(name: str, num_classes: int, kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """The dense model ``name``: a :mod:`pyprune.models` name, ``torchvision:NAME`` or
    ``timm:NAME`` (randomly initialised, ``num_classes`` outputs)."""
    kwargs = dict(kwargs or {})
    if not isinstance(name, str) or not name:
        raise UsageError(f"bad model name {name!r}")
    if name.startswith("torchvision:"):
        tvm = _tv_models()
        try:
            return tvm.get_model(name.split(":", 1)[1], weights=None, num_classes=num_classes, **kwargs)
        except (ValueError, KeyError) as e:
            raise UsageError(f"unknown torchvision model {name!r}: {e}") from None
    if name.startswith("timm:"):
        try:
            import timm
        except Exception:
            raise UsageError(f"model {name!r} needs the timm package, which does not import here") from None
        try:
            return timm.create_model(name.split(":", 1)[1], pretrained=False, num_classes=num_classes, **kwargs)
        except RuntimeError as e:
            raise UsageError(f"unknown timm model {name!r}: {e}") from None
    try:
        return pyprune.models.get_model(name, num_classes=num_classes, **kwargs)
    except ValueError as e:
        raise UsageError(f"{e} (or torchvision:NAME, timm:NAME)") from None
    except TypeError as e:
        raise UsageError(f"model {name!r} does not take {sorted(kwargs)}: {e}") from None


def model_spec(name: str, num_classes: int, image_size: int, mean: Any, std: Any,
               kwargs: Optional[Dict[str, Any]] = None, classes: Any = None,
               data: Optional[str] = None) -> Dict[str, Any]:
    """The plain-data recipe stored in engine model files."""
    return {"model": name, "kwargs": dict(kwargs or {}), "num_classes": int(num_classes),
            "image_size": int(image_size), "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "classes": list(classes or []), "data": data}


def _replace(tmp: str, path: str) -> None:
    os.replace(tmp, path)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) \
        and type(model).__name__ == "DistributedDataParallel" else model


def _payload(model: nn.Module) -> Dict[str, Any]:
    buf = io.BytesIO()
    pyprune.save(_unwrap(model), buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def save_model(model: nn.Module, spec: Dict[str, Any], path: str) -> None:
    """Write ``model`` (pruned or dense) as a pyprune file carrying ``spec``, atomically."""
    payload = _payload(model)
    payload[SPEC_KEY] = spec
    atomic_save(payload, path)


def _read(path: str) -> Any:
    if os.path.isdir(path):
        raise UsageError(f"checkpoint {path} is a directory, not a model file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        raise UsageError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _load_payload(payload: Dict[str, Any], factory: Callable[[], nn.Module], where: str) -> nn.Module:
    buf = io.BytesIO()
    torch.save(payload, buf)
    buf.seek(0)
    try:
        return pyprune.load(buf, factory)
    except UsageError:
        raise
    except (RuntimeError, ValueError, KeyError, IndexError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{where} does not fit the model (a checkpoint of another architecture?): "
                         f"{msg}") from None


def load_model(path: str, *, model: Optional[str] = None, num_classes: Optional[int] = None,
               kwargs: Optional[Dict[str, Any]] = None,
               defaults: Optional[Dict[str, Any]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model in ``path`` and return ``(model, spec)``.

    ``path`` is an engine model file (its spec says what to build; ``model`` given too
    must agree), a plain :func:`pyprune.save` file or a bare ``state_dict`` (both need
    ``model``; ``defaults`` fills the rest of the spec).  A file that does not fit the
    architecture raises :class:`UsageError`.
    """
    payload = _read(path)
    spec: Optional[Dict[str, Any]] = None
    if isinstance(payload, dict) and SPEC_KEY in payload:
        spec = dict(payload[SPEC_KEY])
        if model is not None and _norm(model) != _norm(spec["model"]):
            raise UsageError(f"checkpoint {path} holds a {spec['model']} model, not {model}")
    elif model is None:
        raise UsageError(f"checkpoint {path} does not record its model; give --model NAME")
    if spec is None:
        spec = dict(defaults or {})
        spec["model"] = model
        spec["kwargs"] = dict(kwargs or spec.get("kwargs") or {})
        if num_classes is not None:
            spec["num_classes"] = int(num_classes)
        spec.setdefault("num_classes", 10)

    def factory() -> nn.Module:
        return build_model(spec["model"], spec["num_classes"], spec.get("kwargs"))

    if isinstance(payload, dict) and payload.get("format") == getattr(pyprune.io, "FORMAT", "pyprune.pruned"):
        payload = {k: v for k, v in payload.items() if k != SPEC_KEY}
        return _load_payload(payload, factory, f"checkpoint {path}"), spec
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        net = factory()
        try:
            net.load_state_dict(payload)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            detail = " ".join(s.strip() for s in first[:2])[:300]
            raise UsageError(f"checkpoint {path} does not fit model {spec['model']} "
                             f"(a checkpoint of another architecture?): {detail}") from None
        return net, spec
    raise UsageError(f"{path} is not a model file (neither a pyprune model nor a state_dict)")


def _norm(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def model_to_tensor(model: nn.Module) -> torch.Tensor:
    """The pyprune file of ``model`` as a uint8 tensor (to nest it in a state file)."""
    buf = io.BytesIO()
    pyprune.save(_unwrap(model), buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def model_from_tensor(t: torch.Tensor, factory: Callable[[], nn.Module]) -> nn.Module:
    """Inverse of :func:`model_to_tensor`."""
    return pyprune.load(io.BytesIO(t.numpy().tobytes()), factory)


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (pruning history included)."""
    return copy.deepcopy(_unwrap(model))


def history_of(model: nn.Module) -> list:
    """The surgery records of ``model`` (empty for a dense model)."""
    from pyprune.surgery import history
    return history(_unwrap(model))


def keep_indices(model: nn.Module) -> Dict[str, Dict[int, list]]:
    """``{tensor name: {dim: kept indices into the dense tensor}}`` of a pruned model."""
    return dict(_payload(model).get("keep", {}))
