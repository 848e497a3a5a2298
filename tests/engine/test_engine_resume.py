"""Interrupted runs: a run killed after an epoch and resumed ends bitwise where an
uninterrupted run ends (subprocesses; PYPRUNE_EXIT_AFTER makes the process exit)."""
import json
import os
import subprocess
import sys

import torch

from pyprune.cli import main
from pyprune.engine.job import EXIT_AFTER_ENV, EXIT_AFTER_STATUS

ARGS = ["--model", "vgg11_bn", "--width", "0.125", "--data", "synthetic:train=192,test=64,size=16",
        "--epochs", "2", "--finetune-epochs", "2", "--batch-size", "64", "--method", "l1",
        "--flops", "0.5", "--latency-seconds", "0.02", "--no-plots", "--quiet", "--threads", "1"]


def _run(args, cwd, exit_after=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(EXIT_AFTER_ENV, None)
    if exit_after:
        env[EXIT_AFTER_ENV] = exit_after
    return subprocess.run([sys.executable, "-m", "pyprune", "prune", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


def _weights(path):
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return payload["state_dict"]


def test_resume_after_kill_in_each_phase_matches_uninterrupted(tmp_path, capsys):
    a = str(tmp_path / "a")
    b = str(tmp_path / "b")
    r = _run(ARGS + ["--out", a], tmp_path)
    assert r.returncode == 0, r.stderr
    # interrupted after dense epoch 1, resumed, interrupted after fine-tuning epoch 1, resumed
    r = _run(ARGS + ["--out", b], tmp_path, exit_after="dense:1")
    assert r.returncode == EXIT_AFTER_STATUS, r.stderr
    assert os.path.isfile(os.path.join(b, "state.pt")) and not os.path.exists(os.path.join(b, "report.json"))
    assert not [f for f in os.listdir(b) if f.startswith(".tmp")]
    assert main(["prune", "--out", b, "--quiet"]) == 2  # refuses the unfinished run without --resume
    r = _run(["--resume", b, "--quiet"], tmp_path, exit_after="finetune:1")
    assert r.returncode == EXIT_AFTER_STATUS, r.stderr
    assert torch.load(os.path.join(b, "state.pt"), weights_only=True)["phase"] == "finetune"
    r = _run(["--resume", b, "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr
    wa, wb = _weights(os.path.join(a, "pruned.pt")), _weights(os.path.join(b, "pruned.pt"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    da, db = _weights(os.path.join(a, "dense.pt")), _weights(os.path.join(b, "dense.pt"))
    assert all(torch.equal(da[k], db[k]) for k in da)
    with open(os.path.join(a, "report.json")) as f:
        ra = json.load(f)
    with open(os.path.join(b, "report.json")) as f:
        rb = json.load(f)
    for key in ("dense", "pruned"):
        for m in ("accuracy", "loss", "params", "flops"):
            assert ra[key][m] == rb[key][m], (key, m)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(ra["history"]["dense"]) == strip(rb["history"]["dense"])
    assert strip(ra["history"]["finetune"]) == strip(rb["history"]["finetune"])
    assert main(["prune", "--resume", b]) == 2  # nothing left to resume
    assert "already finished" in capsys.readouterr().err
