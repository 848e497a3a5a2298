"""Training, pruning-job, evaluation and measurement loops behind ``pyprune prune``.

* :mod:`.data`: data specs (``synthetic``, ``cifar10:DIR``, ``imagefolder:DIR``), loaders
  with batched on-device augmentation; :mod:`.synthetic`: the embedded dataset;
* :mod:`.train`: SGD training / evaluation loops; :mod:`.dist`: torchrun / DDP set-up;
* :mod:`.checkpoint`: self-describing model files, atomic writes;
* :mod:`.job`: the whole ``pyprune prune`` run (:func:`run_prune`), resumable;
* :mod:`.tools`: ``profile``, ``eval``, ``bench`` and ``export``.

Nothing below this package imports it; tqdm and matplotlib are imported lazily.
"""
from .errors import UsageError
from .job import PruneJob, run_prune, default_method

__all__ = ["UsageError", "PruneJob", "run_prune", "default_method"]
