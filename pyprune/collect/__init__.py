"""Streaming per-channel activation statistics over a data iterable.

One collector (:func:`collect`) serves every activation-based criterion: HRank's mean
feature-map rank (``"rank"``), APoZ (``"apoz"``) and mean activation (``"mean"``).  It
hooks the tensor each convolution is scored on (see :mod:`pyprune.graph_hooks` for the
rule), runs the model once over ``data`` in eval mode under ``torch.no_grad``, keeps
per-channel running sums and counts only, and all-reduces them across a
``torch.distributed`` process group when one is initialized::

    stats = pyprune.collect.collect(model, loader, ("rank", "apoz"), num_images=500)
    stats["rank"]["features.0"]   # mean rank of each output channel of features.0
"""
from ._collector import STATISTICS, collect, iter_batches

__all__ = ["STATISTICS", "collect", "iter_batches"]
