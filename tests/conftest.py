"""Shared test configuration: CUDA cases skip themselves when no GPU is present."""
import pytest
import torch

try:  # hypothesis is a test dependency; keep examples deterministic and deadline-free
    from hypothesis import settings

    settings.register_profile("pyprune", deadline=None, derandomize=True, print_blob=True)
    settings.load_profile("pyprune")
except ImportError:  # pragma: no cover
    pass

CUDA_AVAILABLE = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if CUDA_AVAILABLE:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def devices():
    """Parametrisation helper: cpu always, cuda marked (and skipped without a GPU)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
