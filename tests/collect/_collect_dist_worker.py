"""Worker of test_collect_distributed.py (a plain module so that spawn can import it)."""
import os

import torch
import torch.distributed as dist


def run(rank, world, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import pyprune
        from pyprune.collect import collect

        torch.manual_seed(0)
        model = pyprune.models.resnet20()
        g = torch.Generator().manual_seed(123)
        images = torch.randn(10, 3, 32, 32, generator=g)
        shard = images[rank::world]                  # each process its own images
        data = [shard[i:i + 2] for i in range(0, shard.shape[0], 2)]
        res = collect(model, data, ("rank", "apoz", "mean"), progress=False)
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
