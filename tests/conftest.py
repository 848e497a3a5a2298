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


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run a module's torch ops single-threaded (use via pytestmark = usefixtures(...)).

    Small models gain nothing from intra-op threads, and on a busy 2-core machine
    OpenMP barriers make each op ~50x slower.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def devices():
    """Parametrisation helper: cpu always, cuda marked (and skipped without a GPU)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
