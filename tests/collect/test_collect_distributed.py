"""Under torch.distributed (2 gloo processes on the CPU), every process gets the
statistics of one process over all the data."""
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyprune
from pyprune.collect import collect

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_equal_one_process(tmp_path):
    here = str(Path(__file__).parent)
    if here not in sys.path:
        sys.path.insert(0, here)     # spawn children inherit sys.path
    import _collect_dist_worker as worker

    mp.spawn(worker.run, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = pyprune.models.resnet20()
    g = torch.Generator().manual_seed(123)
    images = torch.randn(10, 3, 32, 32, generator=g)
    ref = collect(model, [images[i:i + 5] for i in (0, 5)], ("rank", "apoz", "mean"),
                  progress=False)
    for r in (0, 1):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        for stat in ("rank", "apoz", "mean"):
            assert set(got[stat]) == set(ref[stat])
            for k, v in ref[stat].items():
                if stat == "mean":
                    assert torch.allclose(got[stat][k], v, rtol=1e-5, atol=1e-7), (stat, k)  # float32 convs
                else:
                    assert torch.equal(got[stat][k], v), (stat, k)
