"""``pyprune prune`` under torchrun: 2 processes, gloo on the CPU (DDP training, HRank
collection all-reduced, identical pruning checked on every rank, rank 0 writes)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pyprune.cli import main
from pyprune.engine import checkpoint as ckpt

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")


def _torchrun(args, cwd, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_prune_under_torchrun(tmp_path, capsys):
    out = str(tmp_path / "out")
    r = _torchrun(["-m", "pyprune", "prune", "--model", "vgg11_bn", "--width", "0.125",
                   "--data", "synthetic:train=256,test=101,size=16", "--epochs", "1", "--finetune-epochs", "1",
                   "--batch-size", "32", "--method", "hrank" if "hrank" in _methods() else "l1",
                   "--device", "cpu", "--threads", "1", "--latency-seconds", "0.02", "--no-plots", "--quiet",
                   "--json", "--out", out], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout)  # one report: only rank 0 prints
    assert rep["machine"]["world_size"] == 2
    assert len(rep["budget"]["rank_hash"]) == 16
    assert abs(rep["pruned"]["flops"] / rep["dense"]["flops"] - 0.5) < 0.03
    assert sorted(f for f in os.listdir(out) if not f.startswith(".")) == [
        "dense.pt", "pruned.pt", "report.json", "report.txt", "run.json", "state.pt"]
    # the accuracy summed over the two ranks' shards is that of one process over the whole split
    capsys.readouterr()
    assert main(["eval", "--checkpoint", os.path.join(out, "pruned.pt"), "--json", "--quiet",
                 "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["accuracy"] == pytest.approx(rep["pruned"]["accuracy"], abs=1e-9)
    assert res["test_size"] == 101
    net, spec = ckpt.load_model(os.path.join(out, "pruned.pt"))
    assert spec["model"] == "vgg11_bn"


def _methods():
    from pyprune import criteria
    return criteria.CRITERIA


def test_ranks_that_disagree_are_caught(tmp_path):
    script = tmp_path / "disagree.py"
    script.write_text(textwrap.dedent("""
        import sys
        import torch.distributed as dist
        from pyprune.engine.dist import check_same, setup, teardown
        info = setup("cpu")
        check_same(info, {"keep": [0, 1]}, "agreeing")
        try:
            check_same(info, {"keep": [info.rank]}, "the pruned model")
        except RuntimeError as e:
            assert "ranks disagree on the pruned model" in str(e)
            # one write per line: the two ranks share the pipe (a small write is atomic)
            sys.stdout.write(f"caught {info.rank}\\n")
            sys.stdout.flush()
        teardown(info)
    """))
    r = _torchrun([str(script)], tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(r.stdout.split()) == ["0", "1", "caught", "caught"]
