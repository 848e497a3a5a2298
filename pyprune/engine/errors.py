"""The error type of user mistakes in the engine and the command line."""
from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """A user mistake (bad data, unknown model, unmeetable budget...): the command line
    prints its message as one line and exits with status 2, without a traceback."""
