"""pyprune: structured pruning for PyTorch CNNs with a native C++/CUDA core.

The compiled core (``pyprune._C``) takes raw buffers and never links libtorch; the
``pyprune.ops`` layer validates arguments, allocates outputs with torch and calls it.
"""
from ._version import __version__
from . import ops
from ._info import build_info
from . import models
from .errors import PruningWarning
from .api import prune, scores, save, load, profile
from .slimming import Slimming, slimming
from . import summary
from .summary import PruneSummary, last_summary

__all__ = ["__version__", "ops", "build_info", "models", "prune", "scores", "save", "load",
           "profile", "PruningWarning", "slimming", "Slimming",
           "summary", "PruneSummary", "last_summary"]
