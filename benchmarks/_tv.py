"""Import torchvision's model definitions where its compiled ops do not load.

The torchvision wheel on some machines is a CUDA build whose ``_C`` extension does not
load against the CPU torch; ``import torchvision`` then fails inside its two
op-registration modules (``torchvision._meta_registrations`` and
``torchvision._autograd_registrations``), which register fake / autograd kernels for
``torchvision::nms``, ``roi_align``... The classification models are pure Python and
need none of those ops, so :func:`load_torchvision` tries a plain import first and, if
it fails, keeps those two modules from running (empty stand-ins in ``sys.modules``)
and imports again.  ``torchvision.ops`` functions that need the compiled ops (nms,
roi_align, deform_conv2d) still fail when called; nothing in the classification
models calls them.

Used by ``benchmarks/bench_zoo.py`` and ``tests/zoo/test_torchvision_zoo.py`` (which
imports this file by path).
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Optional, Tuple

__all__ = ["load_torchvision", "STUBBED"]

#: The modules replaced by empty stand-ins when the plain import fails.
STUBBED = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


def _drop_partial() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def load_torchvision() -> Tuple[Optional[types.ModuleType], str]:
    """``(torchvision, how)`` where ``how`` is ``"plain"`` or ``"shimmed"``, or
    ``(None, reason)`` when torchvision cannot be imported at all."""
    mod = sys.modules.get("torchvision")
    if mod is not None and hasattr(mod, "models"):
        return mod, "shimmed" if all(
            getattr(sys.modules.get(n), "__pyprune_stub__", False) for n in STUBBED) else "plain"
    try:
        return importlib.import_module("torchvision"), "plain"
    except ModuleNotFoundError as e:
        if e.name == "torchvision":
            return None, "torchvision is not installed"
        first = e
    except Exception as e:  # noqa: BLE001 - typically "operator torchvision::nms does not exist"
        first = e
    _drop_partial()
    for name in STUBBED:
        stub = types.ModuleType(name)
        stub.__pyprune_stub__ = True
        sys.modules[name] = stub
    try:
        tv = importlib.import_module("torchvision")
        _ = tv.models.list_models
    except Exception as e:  # noqa: BLE001
        _drop_partial()
        return None, (f"torchvision cannot be imported ({type(first).__name__}: {first}; "
                      f"with its op registrations stubbed: {type(e).__name__}: {e})")
    return tv, "shimmed"
