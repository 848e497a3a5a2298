"""torch.distributed set-up for runs launched with ``torchrun`` (one process per device).

Without ``WORLD_SIZE > 1`` in the environment everything here is a no-op: rank 0 of a
world of 1.  Under torchrun the process group is initialised (NCCL on CUDA, gloo on the
CPU), each process takes the device of its ``LOCAL_RANK``, and helpers sum metrics over
ranks and check that every rank holds the same object (e.g. the pruned widths).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as tdist

__all__ = ["DistInfo", "setup", "teardown", "all_sum", "check_same", "barrier", "wrap_ddp"]


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _pick_device(arg: Optional[str], local_rank: int) -> torch.device:
    if arg in (None, "", "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(arg)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from .errors import UsageError
            raise UsageError(f"--device {arg}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def setup(device: Optional[str] = None) -> DistInfo:
    """Initialise the process group when launched by torchrun; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, False)
    owns = False
    if not tdist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        tdist.init_process_group(backend=backend)
        owns = True
    return DistInfo(tdist.get_rank(), tdist.get_world_size(), local_rank, dev, owns)


def teardown(info: DistInfo) -> None:
    if info.owns_group and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        tdist.barrier()


def all_sum(info: DistInfo, values: List[float]) -> List[float]:
    """Sum a few numbers over ranks (float64)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64,
                     device=info.device if tdist.get_backend() == "nccl" else "cpu")
    tdist.all_reduce(t)
    return t.cpu().tolist()


def digest(obj: Any) -> str:
    """A short stable hash of plain data (JSON-serialisable after ``default=str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_same(info: DistInfo, obj: Any, what: str) -> str:
    """All-gather the hash of ``obj`` and raise RuntimeError if the ranks disagree."""
    h = digest(obj)
    if info.enabled:
        got: List[Any] = [None] * info.world
        tdist.all_gather_object(got, h)
        if len(set(got)) != 1:
            raise RuntimeError(f"ranks disagree on {what}: hashes {got} (rank {info.rank})")
    return h


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` under a process group, else ``model``."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids)
