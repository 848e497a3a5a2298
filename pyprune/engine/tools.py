"""``pyprune profile``, ``eval``, ``bench`` and ``export``: the work behind the commands."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

import pyprune

from . import checkpoint as ckpt
from .data import load_data
from .dist import setup, teardown
from .errors import UsageError
from .train import TrainConfig, evaluate

__all__ = ["open_model", "profile_model", "eval_checkpoint", "bench", "export", "EXPORT_FORMATS"]

EXPORT_FORMATS = ("torchscript", "exported", "onnx")


def open_model(model: Optional[str], checkpoint: Optional[str], *, num_classes: int = 10,
               image_size: Optional[int] = None, kwargs: Optional[Dict[str, Any]] = None
               ) -> "tuple[nn.Module, Dict[str, Any]]":
    """The model of ``checkpoint`` (its recorded spec) or a fresh ``model``, with its spec."""
    if checkpoint:
        net, spec = ckpt.load_model(checkpoint, model=model, num_classes=num_classes, kwargs=kwargs,
                                    defaults={"image_size": image_size or 32})
    elif model:
        net = ckpt.build_model(model, num_classes, kwargs)
        spec = ckpt.model_spec(model, num_classes, image_size or 32, (0.5,) * 3, (0.25,) * 3, kwargs)
    else:
        raise UsageError("give --model NAME or --checkpoint PATH")
    if image_size:
        spec["image_size"] = int(image_size)
    spec.setdefault("image_size", 32)
    return net.eval(), spec


def profile_model(net: nn.Module, spec: Dict[str, Any]) -> Any:
    s = int(spec["image_size"])
    return pyprune.profile(net, torch.zeros(1, 3, s, s))


def eval_checkpoint(checkpoint: str, data: Optional[str], *, batch_size: int = 256,
                    device: Optional[str] = None, workers: int = 0, quiet: bool = False,
                    model: Optional[str] = None) -> Dict[str, Any]:
    """Test loss and accuracy of the model in ``checkpoint`` on ``data``'s test split."""
    net, spec = ckpt.load_model(checkpoint, model=model)
    ds = load_data(data if data is not None else spec.get("data"), image_size=spec.get("image_size"))
    if ds.num_classes != int(spec.get("num_classes", ds.num_classes)):
        raise UsageError(f"checkpoint {checkpoint} has {spec['num_classes']} classes, the data "
                         f"{ds.num_classes}")
    dist = setup(device)
    try:
        net.to(dist.device)
        res = evaluate(net, ds, TrainConfig(batch_size=batch_size, workers=workers), dist=dist,
                       show=not quiet and dist.main, desc="eval")
    finally:
        teardown(dist)
    prof = profile_model(net.cpu(), {"image_size": ds.image_size})
    return {"checkpoint": checkpoint, "model": spec.get("model"), "data": ds.spec,
            "test_size": len(ds.test), "accuracy": res["accuracy"], "loss": res["loss"],
            "params": prof.params, "flops": prof.flops}


# ----------------------------------------------------------------------------- bench

def _median_ms(fn: Any, dev: torch.device, runs: int = 7) -> float:
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def bench(*, scripts: bool = False, runs: int = 7, quick: bool = False) -> List[Dict[str, Any]]:
    """Timings of ``pyprune.ops.matrix_rank`` and ``select_channels_`` against torch, on
    the CPU and the GPU when present (results checked equal first).  ``scripts`` runs the
    benchmark scripts of a source checkout (``benchmarks/bench_rank.py``,
    ``bench_select.py``) instead, when they exist."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyprune.__file__)))
    bdir = os.path.join(root, "benchmarks")
    if scripts:
        found = [os.path.join(bdir, f) for f in ("bench_rank.py", "bench_select.py")
                 if os.path.isfile(os.path.join(bdir, f))]
        if not found:
            raise UsageError("no benchmarks/ scripts here (a source checkout has them); run "
                             "`pyprune bench` without --scripts for the built-in timing")
        rows = []
        for path in found:
            rc = subprocess.call([sys.executable, path], cwd=root)
            rows.append({"script": os.path.relpath(path, root), "returncode": rc})
        return rows
    rows = []
    devs = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    gen = torch.Generator().manual_seed(0)
    n_maps, hw = (64, 16) if quick else (512, 32)
    for dev in devs:
        x = torch.randn(n_maps, hw, hw, generator=gen).to(dev)
        ref = torch.linalg.matrix_rank(x)
        got = pyprune.ops.matrix_rank(x)
        if not torch.equal(got.cpu(), ref.cpu()):
            raise RuntimeError("pyprune.ops.matrix_rank disagrees with torch.linalg.matrix_rank")
        t_p = _median_ms(lambda: pyprune.ops.matrix_rank(x), dev, runs)
        t_t = _median_ms(lambda: torch.linalg.matrix_rank(x), dev, runs)
        rows.append({"op": f"matrix_rank {n_maps}x{hw}x{hw}", "device": dev.type, "pyprune_ms": t_p,
                     "torch_ms": t_t, "speedup": t_t / t_p})
        c = 128 if quick else 512
        w = torch.randn(c, c, 3, 3, generator=gen).to(dev)
        keep = torch.arange(0, c, 2)
        ref_w = w.index_select(0, keep.to(dev)).index_select(1, keep.to(dev))

        def ours() -> None:
            t = w.clone()
            pyprune.ops.select_channels_([(t, 0), (t, 1)], keep)

        def theirs() -> None:
            w.clone().index_select(0, keep.to(dev)).index_select(1, keep.to(dev))

        t = w.clone()
        pyprune.ops.select_channels_([(t, 0), (t, 1)], keep)
        if not torch.equal(t, ref_w):
            raise RuntimeError("pyprune.ops.select_channels_ disagrees with index_select")
        t_p = _median_ms(ours, dev, runs)
        t_t = _median_ms(theirs, dev, runs)
        rows.append({"op": f"select_channels_ {c}x{c}x3x3 keep 50% (both dims, incl. clone)",
                     "device": dev.type, "pyprune_ms": t_p, "torch_ms": t_t, "speedup": t_t / t_p})
    return rows


# ----------------------------------------------------------------------------- export

def _compare(ref: torch.Tensor, got: Any, what: str) -> float:
    if isinstance(got, (list, tuple)):
        got = got[0]
    got = torch.as_tensor(got)
    if got.shape != ref.shape:
        raise RuntimeError(f"{what}: output shape {tuple(got.shape)} differs from eager {tuple(ref.shape)}")
    err = float((got.float() - ref.float()).abs().max())
    scale = float(ref.abs().max()) or 1.0
    if err > 1e-4 * max(1.0, scale):
        raise RuntimeError(f"{what}: outputs differ from the eager model (max abs error {err:.3g})")
    return err


def _onnx_export(net: torch.nn.Module, x: torch.Tensor, path: str) -> str:
    """Write ``net`` as ONNX with a dynamic batch dimension; returns how it was exported.

    torch >= 2.5 exports through ``torch.export`` (``dynamo=True``, which needs the
    onnxscript package; the batch is a ``torch.export.Dim``); older torch, or a
    missing onnxscript, uses the TorchScript-based exporter with ``dynamic_axes``.
    """
    import inspect
    import warnings

    names: Dict[str, Any] = {"input_names": ["input"], "output_names": ["output"]}
    params = inspect.signature(torch.onnx.export).parameters
    if "dynamo" in params:
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            pass
        else:
            batch = torch.export.Dim("batch", min=1, max=4096)
            if "external_data" in params:  # one self-contained file
                names["external_data"] = False
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's progress notes and deprecations
                torch.onnx.export(net, (x,), path, dynamo=True, dynamic_shapes=({0: batch},),
                                  verbose=False, **names)
            return "torch.onnx.export(dynamo=True)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        kw = {"dynamo": False} if "dynamo" in params else {}
        torch.onnx.export(net, (x,), path, dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          **kw, **names)
    return "torch.onnx.export (TorchScript-based)"


def export(checkpoint: str, fmt: str, out: Optional[str] = None, *, model: Optional[str] = None,
           batch: int = 2) -> Dict[str, Any]:
    """Export the model of ``checkpoint`` as ``fmt`` and check the exported program's
    outputs against the eager model's on random inputs."""
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise UsageError("--format onnx needs the onnx package (pip install onnx); "
                             "torchscript and exported work without it") from None
    net, spec = ckpt.load_model(checkpoint, model=model)
    net = net.eval().float()
    s = int(spec.get("image_size", 32))
    x = torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net(x)
    ext = {"torchscript": ".ts.pt", "exported": ".pt2", "onnx": ".onnx"}[fmt]
    if out is None:
        base = checkpoint[:-3] if checkpoint.endswith(".pt") else checkpoint
        out = base + ext
    if os.path.isdir(out):
        raise UsageError(f"--output {out} is a directory")
    tmp = out + ".tmp" + ext
    info: Dict[str, Any] = {"format": fmt, "path": out, "checkpoint": checkpoint, "input_shape": list(x.shape)}
    with torch.no_grad():
        if fmt == "torchscript":
            import warnings
            with warnings.catch_warnings():
                # asked for explicitly: torch's deprecation notice of TorchScript is no news here
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    prog = torch.jit.script(net)
                    info["how"] = "torch.jit.script"
                except Exception:
                    prog = torch.jit.trace(net, x)
                    info["how"] = "torch.jit.trace"
                prog.save(tmp)
                loaded = torch.jit.load(tmp)
            info["max_abs_error"] = _compare(ref, loaded(x), "TorchScript")
        elif fmt == "exported":
            batch_dim = torch.export.Dim("batch", min=1, max=4096)
            try:
                ep = torch.export.export(net, (x,), dynamic_shapes=({0: batch_dim},))
                info["dynamic_batch"] = True
            except Exception:
                ep = torch.export.export(net, (x,))
                info["dynamic_batch"] = False
            torch.export.save(ep, tmp)
            loaded = torch.export.load(tmp)
            info["max_abs_error"] = _compare(ref, loaded.module()(x), "torch.export")
            info["how"] = "torch.export.export + torch.export.save"
        else:
            info["how"] = _onnx_export(net, x, tmp) + ", onnx.checker"
            import onnx
            onnx.checker.check_model(onnx.load(tmp))
            try:
                import onnxruntime as ort
            except ImportError:
                info["checked"] = "onnx.checker only (onnxruntime not installed: outputs not compared)"
            else:
                sess = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
                got = sess.run(None, {"input": x.numpy()})[0]
                info["max_abs_error"] = _compare(ref, torch.from_numpy(got), "ONNX")
    os.replace(tmp, out)
    return info
