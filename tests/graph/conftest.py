"""Make the helper modules of this folder (pyprune_zoo, pyprune_checks) importable.

pytest runs with --import-mode=importlib, which does not put test folders on sys.path.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import pytest  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _single_thread(torch_single_thread):
    """Every graph test module runs torch single-threaded (see tests/conftest.py)."""
    yield
