"""Warning and error classes of pyprune."""
from __future__ import annotations

__all__ = ["PruningWarning"]


class PruningWarning(UserWarning):
    """Pruning did less than asked: groups left whole because the graph did not
    understand an op, a budget met only approximately, an option that had no effect.

    Filter it like any warning (``warnings.simplefilter("ignore", pyprune.PruningWarning)``);
    the details go to ``logging.getLogger("pyprune")``.
    """
