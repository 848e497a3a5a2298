"""Fast native ops: batched matrix rank and in-place channel compaction.

Each function validates its arguments at the Python boundary (dtype, dims and
shapes, devices, then an early return on empty input), allocates every output
and workspace with torch, and calls the native core ``pyprune._C``.
"""
from ._common import get_num_threads, set_num_threads
from .rank import matrix_rank
from .select import select_channels, select_channels_

__all__ = ["matrix_rank", "select_channels_", "select_channels", "get_num_threads", "set_num_threads"]
