"""Training, fine-tuning and evaluation loops.

SGD with momentum and weight decay, a cosine or step schedule stepped once per epoch,
optional label smoothing, and on CUDA mixed precision (bfloat16 autocast where
supported, else float16 with a gradient scaler) and channels_last.  Metrics are summed
over ranks under torch.distributed.  Progress bars (tqdm, imported lazily) go to
stderr on rank 0 unless ``quiet``.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional

import torch
import torch.nn as nn

from .data import Dataset, batches, num_batches
from .dist import DistInfo, all_sum

__all__ = ["TrainConfig", "make_optimizer", "make_scheduler", "train_epoch", "evaluate", "progress",
           "amp_dtype"]


@dataclass
class TrainConfig:
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"        # "cosine" | "step" | "constant"
    label_smoothing: float = 0.0
    batch_size: int = 128
    workers: int = 0
    amp: Optional[bool] = None      # None: on for CUDA
    channels_last: Optional[bool] = None  # None: on for CUDA
    seed: int = 0
    max_batches: Optional[int] = None  # cap per epoch (smoke tests)


def progress(iterable: Any, *, total: Optional[int], desc: str, enabled: bool, leave: bool = False) -> Any:
    """A tqdm bar (with ETA) over ``iterable`` when enabled, else the iterable itself."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=leave, dynamic_ncols=True, mininterval=0.5)


def amp_dtype(device: torch.device, cfg: TrainConfig) -> Optional[torch.dtype]:
    on = cfg.amp if cfg.amp is not None else device.type == "cuda"
    if not on or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: Optional[float] = None) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr if lr is None else lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0)


def make_scheduler(opt: torch.optim.Optimizer, kind: str, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    epochs = max(1, int(epochs))
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if kind == "step":
        return torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=sorted({max(1, int(epochs * 0.5)), max(1, int(epochs * 0.75))}), gamma=0.1)
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    raise ValueError(f"schedule must be cosine, step or constant, got {kind!r}")


def _autocast(device: torch.device, dtype: Optional[torch.dtype]) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_epoch(model: nn.Module, ds: Dataset, opt: torch.optim.Optimizer, cfg: TrainConfig, *,
                dist: DistInfo, phase: str, epoch: int, scaler: Any = None,
                show: bool = False, desc: str = "train") -> Dict[str, float]:
    """One epoch over the training split; returns ``{"loss", "accuracy"}`` (percent)."""
    device = dist.device
    model.train()
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    dtype = amp_dtype(device, cfg)
    cl = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    nb = num_batches(ds.train, cfg.batch_size, train=True, world=dist.world)
    if cfg.max_batches is not None:
        nb = min(nb, cfg.max_batches)
    it = batches(ds, "train", cfg.batch_size, device=device, seed=cfg.seed, phase=phase, epoch=epoch,
                 rank=dist.rank, world=dist.world, workers=cfg.workers, channels_last=cl, limit=nb)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = progress(it, total=nb, desc=desc, enabled=show)
    for x, y in bar:
        with _autocast(device, dtype):
            out = model(x)
            loss = crit(out.float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        with torch.no_grad():
            loss_sum += loss.detach().double() * y.numel()
            correct += (out.argmax(1) == y).sum()
        seen += y.numel()
        if show and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    # nothing of the last step's autograd graph outlives the epoch (pruning comes next)
    del bar
    out = loss = None  # noqa: F841
    opt.zero_grad(set_to_none=True)
    tot_loss, tot_correct, tot_seen = all_sum(dist, [float(loss_sum), float(correct), float(seen)])
    return {"loss": tot_loss / max(tot_seen, 1), "accuracy": 100.0 * tot_correct / max(tot_seen, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, ds: Dataset, cfg: TrainConfig, *, dist: DistInfo, split: str = "test",
             show: bool = False, desc: str = "eval") -> Dict[str, float]:
    """Loss and top-1 accuracy (percent) over a whole split, summed over ranks."""
    device = dist.device
    was = model.training
    model.eval()
    crit = nn.CrossEntropyLoss(reduction="sum")
    dtype = amp_dtype(device, cfg)
    cl = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    source = ds.test if split == "test" else ds.train
    nb = -(-len(range(dist.rank, len(source), dist.world)) // cfg.batch_size)
    it = batches(ds, split, cfg.batch_size, device=device, seed=cfg.seed, rank=dist.rank,
                 world=dist.world, workers=cfg.workers, channels_last=cl)
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in progress(it, total=nb, desc=desc, enabled=show):
        with _autocast(device, dtype):
            out = model(x).float()
        loss_sum += float(crit(out, y))
        correct += int((out.argmax(1) == y).sum())
        seen += y.numel()
    model.train(was)
    loss_sum, correct, seen = all_sum(dist, [loss_sum, float(correct), float(seen)])
    return {"loss": loss_sum / max(seen, 1), "accuracy": 100.0 * correct / max(seen, 1)}
