"""``pyprune prune`` and the other subcommands, run in-process on tiny data."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

import pyprune
from pyprune.cli import main
from pyprune.engine import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TINY = ["--model", "vgg11_bn", "--width", "0.125", "--data", "synthetic:train=256,test=128,size=16",
        "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "64", "--latency-seconds", "0.05",
        "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, torch_single_thread):
    out = str(tmp_path_factory.mktemp("run") / "out")
    import io
    from contextlib import redirect_stdout
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["prune", *TINY, "--method", "l1", "--flops", "0.5", "--out", out])
    assert rc == 0
    return out, buf.getvalue()


def _report(out):
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def _one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyprune: error:"), err
    for n in needles:
        assert n in lines[0], err


def test_outputs_and_report_consistent_with_profile(run):
    out, printed = run
    for f in ("dense.pt", "pruned.pt", "report.json", "report.txt", "run.json", "channels.png",
              "scores.png", "history.png"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    rep = _report(out)
    pruned, spec = ckpt.load_model(os.path.join(out, "pruned.pt"))
    dense, _ = ckpt.load_model(os.path.join(out, "dense.pt"))
    assert spec["model"] == "vgg11_bn" and spec["kwargs"] == {"width": 0.125} and spec["image_size"] == 16
    x = torch.zeros(1, 3, 16, 16)
    for key, model in (("dense", dense), ("pruned", pruned)):
        prof = pyprune.profile(model, x)
        assert rep[key]["params"] == prof.params and rep[key]["flops"] == prof.flops
        assert 0.0 <= rep[key]["accuracy"] <= 100.0
    assert abs(rep["pruned"]["flops"] / rep["dense"]["flops"] - 0.5) < 0.03
    assert rep["budget"]["kind"] == "flops" and rep["budget"]["target"] == 0.5
    assert rep["method"] == "l1"
    assert set(rep["latency"]["cpu"]) == {"1", "64"}
    for t in rep["latency"]["cpu"].values():
        assert t["dense_ms"] > 0 and t["pruned_ms"] > 0
        assert t["speedup"] == pytest.approx(t["dense_ms"] / t["pruned_ms"])
    assert len(rep["history"]["dense"]) == 1 and len(rep["history"]["finetune"]) == 1
    assert rep["pruned"]["accuracy"] == rep["history"]["finetune"][-1]["test_accuracy"]
    widths = {r["name"]: r for r in rep["layers"]}
    mods = dict(pruned.named_modules())
    for name, r in widths.items():
        m = mods[name]
        assert r["after"] == getattr(m, "out_channels", getattr(m, "out_features", None))
    assert widths["classifier.linear2"]["after"] == 10
    # the printed table
    for needle in ("test accuracy", "parameters", "FLOPs", "latency cpu batch 1", "latency cpu batch 64",
                   "speedup", "features.0"):
        assert needle in printed
    # still an ordinary pyprune.save file
    again = pyprune.load(os.path.join(out, "pruned.pt"), lambda: pyprune.models.vgg11_bn(width=0.125))
    y = torch.randn(2, 3, 16, 16)
    assert torch.equal(again.eval()(y), pruned.eval()(y))


def test_eval_profile_export(run, capsys, tmp_path):
    out, _ = run
    rep = _report(out)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", os.path.join(out, "pruned.pt"), "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["accuracy"] == pytest.approx(rep["pruned"]["accuracy"])
    assert res["params"] == rep["pruned"]["params"]
    assert main(["profile", "--checkpoint", os.path.join(out, "pruned.pt"), "--json"]) == 0
    prof = json.loads(capsys.readouterr().out)
    assert prof["flops"] == rep["pruned"]["flops"] and prof["image_size"] == 16
    assert main(["profile", "--model", "resnet20"]) == 0
    assert "272,474" in capsys.readouterr().out
    for fmt, ext in (("torchscript", ".ts"), ("exported", ".pt2")):
        target = str(tmp_path / f"m{ext}")
        assert main(["export", "--checkpoint", os.path.join(out, "pruned.pt"), "--format", fmt,
                     "-o", target]) == 0
        assert "max abs error" in capsys.readouterr().out
        assert os.path.getsize(target) > 0
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ts = torch.jit.load(str(tmp_path / "m.ts"))
    net, _ = ckpt.load_model(os.path.join(out, "pruned.pt"))
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(ts(x), net.eval()(x), atol=1e-5)
    ep = torch.export.load(str(tmp_path / "m.pt2"))
    assert torch.allclose(ep.module()(x), net(x), atol=1e-5)
    try:
        import onnx  # noqa: F401
    except ImportError:
        rc = main(["export", "--checkpoint", os.path.join(out, "pruned.pt"), "--format", "onnx"])
        _one_line_error(capsys, rc, "onnx package")


def test_export_onnx_matches_eager(run, tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out, _ = run
    target = str(tmp_path / "m.onnx")
    rc = main(["export", "--checkpoint", os.path.join(out, "pruned.pt"), "--format", "onnx", "-o", target])
    assert rc == 0, capsys.readouterr().err
    assert "max abs error" in capsys.readouterr().out
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    net, _ = ckpt.load_model(os.path.join(out, "pruned.pt"))
    sess = ort.InferenceSession(target, providers=["CPUExecutionProvider"])
    for n in (1, 5):  # the batch dimension is dynamic
        x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(n))
        got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
        with torch.no_grad():
            ref = net.eval()(x)
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5), (got - ref).abs().max()


def test_from_checkpoint_on_cifar10_pickles(run, tmp_path, capsys):
    out, _ = run
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (24, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, 24).tolist()}, f)
    out2 = str(tmp_path / "out2")
    assert main(["prune", "--checkpoint", os.path.join(out, "dense.pt"), "--data", f"cifar10:{tmp_path}",
                 "--method", "random", "--params", "0.5", "--finetune-epochs", "1", "--batch-size", "32",
                 "--latency-seconds", "0.05", "--no-plots", "--quiet", "--json", "--out", out2]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["history"]["dense"] == [] and len(rep["history"]["finetune"]) == 1
    assert rep["image_size"] == 32 and rep["train_size"] == 120 and rep["test_size"] == 24
    assert abs(rep["pruned"]["params"] / rep["dense"]["params"] - 0.5) < 0.03
    dense_file, _ = ckpt.load_model(os.path.join(out, "dense.pt"))
    assert rep["dense"]["params"] == pyprune.profile(dense_file, torch.zeros(1, 3, 32, 32)).params


def test_imagefolder_run(tmp_path, capsys):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b", "c"):
            os.makedirs(tmp_path / "imgs" / split / c)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / c / f"{i}.jpg")
    out = str(tmp_path / "out")
    assert main(["prune", "--model", "vgg11_bn", "--width", "0.125", "--data", f"imagefolder:{tmp_path / 'imgs'}",
                 "--image-size", "16", "--workers", "0", "--epochs", "1", "--finetune-epochs", "0",
                 "--method", "l2", "--ratio", "0.25", "--latency-seconds", "0.05", "--no-plots", "--quiet",
                 "--json", "--out", out]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["num_classes"] == 3 and rep["image_size"] == 16
    assert rep["layers"][0]["after"] == 6  # 8 channels, a quarter removed
    net, spec = ckpt.load_model(os.path.join(out, "pruned.pt"))
    assert spec["classes"] == ["a", "b", "c"] and net.classifier.linear2.out_features == 3


def test_user_errors_are_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    bad_cifar = tmp_path / "badcifar"
    bad_cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(bad_cifar / name, "wb") as f:
            pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
    other = tmp_path / "resnet.pt"
    torch.save(pyprune.models.resnet20().state_dict(), other)
    out = str(tmp_path / "o")
    cases = [
        (["--model", "nosuchnet"], "unknown model 'nosuchnet'"),
        (["--method", "nosuchmethod"], "unknown pruning method 'nosuchmethod'"),
        (["--data", f"cifar10:{tmp_path / 'missing'}"], "is not a directory"),
        (["--data", f"cifar10:{bad_cifar}"], "expected data uint8"),
        (["--data", "imagenet:/x"], "unknown data spec"),
        (["--checkpoint", str(other), "--model", "vgg11_bn"], "another architecture"),
        (["--checkpoint", str(tmp_path / "nofile.pt")], "does not exist"),
        (["--flops", "1.5"], "--flops must be in (0, 1)"),
        (["--flops", "0.0001"], "--flops 0.0001"),
    ]
    base = ["prune", "--width", "0.125", "--data", "synthetic:train=64,test=32,size=16", "--epochs", "1",
            "--finetune-epochs", "0", "--batch-size", "32", "--quiet", "--no-plots"]
    for extra, needle in cases:
        args = list(base)
        if "--data" in extra:
            i = args.index("--data")
            del args[i:i + 2]
        rc = main(args + extra + ["--out", out])
        _one_line_error(capsys, rc, needle)
    _one_line_error(capsys, main(base + ["--out", str(afile)]), "is a file")
    _one_line_error(capsys, main(["prune", "--resume", str(tmp_path / "nothing")]), "no interrupted run")
    _one_line_error(capsys, main(["eval", "--checkpoint", str(other)]), "give --model")
    _one_line_error(capsys, main(["profile"]), "--model NAME or --checkpoint")
    # argparse mistakes: one line too
    _one_line_error(capsys, main(["prune", "--flops", "0.5", "--ratio", "0.5", "--out", out]), "not allowed")


def test_unfinished_run_needs_resume(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    torch.save({"phase": "dense", "epoch": 1}, out / "state.pt")
    rc = main(["prune", "--out", str(out), "--quiet"])
    _one_line_error(capsys, rc, "--resume")


def test_help_of_every_subcommand(capsys):
    for cmd in ("prune", "profile", "eval", "bench", "export"):
        assert main([cmd, "--help"]) == 0
        assert "usage: pyprune " + cmd in capsys.readouterr().out


def test_bench_quick(capsys):
    assert main(["bench", "--quick", "--runs", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["device"] for r in rows} >= {"cpu"}
    assert all(r["pyprune_ms"] > 0 and r["torch_ms"] > 0 for r in rows)


def test_slim_trains_with_the_sparsity_penalty(tmp_path, capsys):
    pytest.importorskip("pyprune.slimming")
    gammas = {}
    for lam in (0.0, 1.0):
        out = str(tmp_path / f"slim{lam}")
        args = ["prune", *TINY, "--method", "slim", "--ratio", "0.3", "--finetune-epochs", "0",
                "--slim-lambda", str(lam), "--no-plots", "--out", out]
        assert main(args) == 0
        dense, _ = ckpt.load_model(os.path.join(out, "dense.pt"))
        gammas[lam] = torch.cat([m.weight.detach().abs().flatten() for m in dense.modules()
                                 if isinstance(m, torch.nn.BatchNorm2d)]).mean().item()
        rep = _report(out)
        assert rep["method"] == "slim" and rep["budget"]["kind"] == "ratio"
    capsys.readouterr()
    assert gammas[1.0] < 0.9 * gammas[0.0]  # the L1 penalty shrank the BatchNorm scales
