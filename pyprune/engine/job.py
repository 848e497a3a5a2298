"""The whole pruning job: train (or load) -> score -> prune to a budget -> fine-tune ->
evaluate -> measure -> report.  ``pyprune prune`` is :func:`run_prune`.

Outputs (rank 0 only) in ``out``:

* ``dense.pt`` and ``pruned.pt``: engine model files (:mod:`pyprune.engine.checkpoint`),
  i.e. :func:`pyprune.save` files that also record how to build the model;
* ``report.json``, ``report.txt`` (the printed table) and PNG plots (:mod:`pyprune.report`);
* ``state.pt``: the resumable state, written atomically after every epoch;
  ``run.json``: the job's settings (``--resume DIR`` reads them back).

Resuming continues in the same phase at the next epoch with the saved model, optimizer,
scheduler, scaler and RNG states.  Every epoch's batches come from generators seeded by
``(seed, phase, epoch)``, so a resumed run computes the same thing as one that was never
interrupted.  The environment variable ``PYPRUNE_EXIT_AFTER=phase:epoch`` (``dense:2``,
``finetune:1``) makes the process exit with status 75 right after that epoch's state is
written; the tests use it to interrupt a run.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

import pyprune
from pyprune import criteria

from . import checkpoint as ckpt
from .data import Dataset, batches, load_data
from .dist import DistInfo, barrier, check_same, setup, teardown, wrap_ddp
from .errors import UsageError
from .latency import latencies
from .train import TrainConfig, amp_dtype, evaluate, make_optimizer, make_scheduler, train_epoch

__all__ = ["PruneJob", "run_prune", "default_method", "layer_widths", "prune_to_budget",
           "EXIT_AFTER_ENV", "EXIT_AFTER_STATUS"]

EXIT_AFTER_ENV = "PYPRUNE_EXIT_AFTER"
EXIT_AFTER_STATUS = 75
STATE_FILE = "state.pt"
RUN_FILE = "run.json"

DEFAULT_MODEL = "vgg11_bn"
DEFAULT_MODEL_KWARGS = {"width": 0.25}


def default_method() -> str:
    """``"hrank"`` when it is registered, else ``"l1"``."""
    return "hrank" if "hrank" in criteria.CRITERIA else "l1"


@dataclass
class PruneJob:
    """Settings of one ``pyprune prune`` run (the command-line flags)."""

    out: str
    model: Optional[str] = DEFAULT_MODEL  # None with a checkpoint: the model it records
    model_kwargs: Dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MODEL_KWARGS))
    method: Optional[str] = None
    flops: Optional[float] = None
    params: Optional[float] = None
    ratio: Optional[float] = None
    data: Optional[str] = None
    checkpoint: Optional[str] = None
    epochs: int = 12
    finetune_epochs: int = 8
    lr: float = 0.05
    finetune_lr: Optional[float] = None  # default lr / 5
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    device: Optional[str] = None
    workers: int = 0
    seed: int = 0
    image_size: Optional[int] = None
    prune_batches: int = 8
    slim_lambda: float = 1e-4
    method_options: Dict[str, Any] = field(default_factory=dict)
    amp: Optional[bool] = None
    latency_batches: Tuple[int, ...] = (1, 64)
    latency_seconds: float = 2.0
    max_batches: Optional[int] = None
    plots: bool = True
    threads: Optional[int] = None
    quiet: bool = False
    command: Optional[List[str]] = None

    def to_json(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["latency_batches"] = list(self.latency_batches)
        return d

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "PruneJob":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "latency_batches" in kw:
            kw["latency_batches"] = tuple(kw["latency_batches"])
        return cls(**kw)


# ----------------------------------------------------------------------------- helpers

def _log(job: PruneJob, dist: DistInfo, msg: str) -> None:
    if not job.quiet and dist.main:
        print(msg, file=sys.stderr, flush=True)


def _check_job(job: PruneJob) -> None:
    given = [(k, getattr(job, k)) for k in ("flops", "params", "ratio") if getattr(job, k) is not None]
    if len(given) > 1:
        raise UsageError(f"give one of --flops, --params, --ratio, not {' and '.join('--' + k for k, _ in given)}")
    for k, v in given:
        lo_ok = v > 0 if k != "ratio" else v >= 0
        if not (lo_ok and v < 1):
            raise UsageError(f"--{k} must be in {'(0, 1)' if k != 'ratio' else '[0, 1)'}, got {v}")
    try:
        criteria.get(job.method)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for k in ("epochs", "finetune_epochs"):
        if getattr(job, k) < 0:
            raise UsageError(f"--{k.replace('_', '-')} must be >= 0, got {getattr(job, k)}")
    if job.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {job.batch_size}")
    if job.schedule not in ("cosine", "step", "constant"):
        raise UsageError(f"--schedule must be cosine, step or constant, got {job.schedule!r}")
    if job.lr <= 0 or (job.finetune_lr is not None and job.finetune_lr <= 0):
        raise UsageError("--lr and --finetune-lr must be > 0")
    if not 0 <= job.label_smoothing < 1:
        raise UsageError(f"--label-smoothing must be in [0, 1), got {job.label_smoothing}")


def check_out_dir(out: str, *, resume: bool) -> None:
    """UsageError if ``out`` cannot hold a run (a file; a run in progress without --resume)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file, not a directory")
    state = os.path.join(out, STATE_FILE)
    if resume:
        if not os.path.isfile(state) or not os.path.isfile(os.path.join(out, RUN_FILE)):
            raise UsageError(f"--resume {out}: no interrupted run there (no {STATE_FILE} / {RUN_FILE})")
        try:
            phase = torch.load(state, map_location="cpu", weights_only=True).get("phase")
        except Exception as e:
            raise UsageError(f"--resume {out}: cannot read {STATE_FILE}: {e}") from None
        if phase == "done":
            raise UsageError(f"--resume {out}: that run is already finished")
        return
    if os.path.isfile(state):
        try:
            phase = torch.load(state, map_location="cpu", weights_only=True).get("phase")
        except Exception:
            phase = None
        if phase != "done":
            raise UsageError(f"--out {out} holds an unfinished run; continue it with --resume {out} "
                             f"or choose another --out")


def _exit_hook(phase: str, epoch: int) -> None:
    want = os.environ.get(EXIT_AFTER_ENV)
    if want and want == f"{phase}:{epoch}":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_AFTER_STATUS)


def _rng_state(device: torch.device) -> Dict[str, Any]:
    st: Dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def layer_widths(dense: nn.Module, pruned: nn.Module) -> List[Dict[str, Any]]:
    """Per conv / linear layer: output (and input) channels before and after pruning."""
    def widths(m: nn.Module) -> Dict[str, Tuple[str, int, int]]:
        out = {}
        for name, mod in m.named_modules():
            if isinstance(mod, nn.modules.conv._ConvNd):
                out[name] = (type(mod).__name__, int(mod.out_channels), int(mod.in_channels))
            elif isinstance(mod, nn.Linear):
                out[name] = (type(mod).__name__, int(mod.out_features), int(mod.in_features))
        return out

    before, after = widths(dense), widths(pruned)
    return [{"name": n, "type": t, "before": o, "after": after.get(n, (t, o, i))[1],
             "in_before": i, "in_after": after.get(n, (t, o, i))[2]} for n, (t, o, i) in before.items()]


def _criterion_data(job: PruneJob, ds: Dataset, dist: DistInfo) -> Optional[List[Tuple[torch.Tensor, torch.Tensor]]]:
    if criteria.info(job.method).data == "none":
        return None
    # un-augmented training images (each rank its own share); criteria all-reduce under DDP
    src = dataclasses.replace(ds, augment="none")
    return list(batches(src, "train", job.batch_size, device=dist.device, seed=job.seed, phase="criterion",
                        epoch=0, rank=dist.rank, world=dist.world, workers=job.workers,
                        limit=max(1, job.prune_batches)))


def _profile(model: nn.Module, image_size: int) -> Any:
    net = ckpt.clone_model(model).cpu().float()
    return pyprune.profile(net, torch.zeros(1, 3, image_size, image_size))


def prune_to_budget(model: nn.Module, example: torch.Tensor, method: str, data: Any, *,
                    flops: Optional[float] = None, params: Optional[float] = None,
                    ratio: Optional[float] = None,
                    options: Optional[Dict[str, Any]] = None, image_size: int = 32) -> Dict[str, Any]:
    """Prune ``model`` in place to keep ``flops`` / ``params`` of the dense count, or by
    ``ratio``; returns what was asked and achieved.

    The budget is searched by ``pyprune.prune`` (``flops=`` / ``params=``).
    """
    options = dict(options or {})
    dense_prof = _profile(model, image_size)
    kind = "flops" if flops is not None else "params" if params is not None else "ratio"
    target = flops if flops is not None else params if params is not None else ratio
    data_kw = {"data": data} if data is not None else {}
    used: Dict[str, Any] = {"search": "pyprune.prune"}
    if kind == "ratio":
        pyprune.prune(model, example, method, ratio=target, **data_kw, **options)
    else:
        try:
            pyprune.prune(model, example, method, **{kind: target}, **data_kw, **options)
        except ValueError as e:
            raise UsageError(f"--{kind} {target}: {e}") from None
    prof = _profile(model, image_size)
    achieved = {"flops": prof.flops / dense_prof.flops, "params": prof.params / dense_prof.params}
    if kind != "ratio" and achieved[kind] > target * 1.05 + 1e-9:
        raise UsageError(f"--{kind} {target} cannot be met: the smallest model reached keeps "
                         f"{achieved[kind]:.3f} of the {kind}")
    return {"kind": kind, "target": target, "achieved_flops": achieved["flops"],
            "achieved_params": achieved["params"], **used}


def _prune_summary(model: nn.Module) -> Optional[Dict[str, Any]]:
    """What ``pyprune.prune`` recorded about the pruning (None when it records nothing)."""
    s = pyprune.last_summary(model)
    return s.to_dict() if s is not None else None


# ----------------------------------------------------------------------------- the job

class _Runner:
    def __init__(self, job: PruneJob, dist: DistInfo) -> None:
        self.job, self.dist = job, dist
        self.show = not job.quiet and dist.main
        self.state_path = os.path.join(job.out, STATE_FILE)
        self.cfg = TrainConfig(lr=job.lr, momentum=job.momentum, weight_decay=job.weight_decay,
                               schedule=job.schedule, label_smoothing=job.label_smoothing,
                               batch_size=job.batch_size, workers=job.workers, amp=job.amp,
                               seed=job.seed, max_batches=job.max_batches)
        self.timing: Dict[str, float] = {}

    # -- state
    def save_state(self, state: Dict[str, Any]) -> None:
        if self.dist.main:
            ckpt.atomic_save(state, self.state_path)
        barrier(self.dist)

    def load_state(self) -> Optional[Dict[str, Any]]:
        if not os.path.isfile(self.state_path):
            return None
        try:
            return torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UsageError(f"cannot read {self.state_path}: {e}") from None

    # -- one phase of training
    def fit(self, model: nn.Module, phase: str, epochs: int, lr: float, state: Optional[Dict[str, Any]],
            extra: Dict[str, Any]) -> List[Dict[str, Any]]:
        dist, cfg, job = self.dist, self.cfg, self.job
        cl = cfg.channels_last if cfg.channels_last is not None else dist.device.type == "cuda"
        model.to(dist.device)
        if cl:
            model.to(memory_format=torch.channels_last)
        net = wrap_ddp(model, dist)
        opt = make_optimizer(model, cfg, lr)
        sched = make_scheduler(opt, cfg.schedule, epochs)
        dtype = amp_dtype(dist.device, cfg)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        reg = None
        if phase == "dense" and job.method == "slim":
            try:
                from pyprune.slimming import slimming as attach_slimming
            except ImportError:
                warnings.warn("pyprune.slimming is not available: training without the sparsity "
                              "regularizer", pyprune.PruningWarning, stacklevel=2)
            else:
                reg = attach_slimming(model, lam=job.slim_lambda, optimizer=opt)
        history: List[Dict[str, Any]] = []
        start = 0
        if state is not None and state.get("phase") == phase:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            history = list(state["history"][phase])
            start = int(state["epoch"])
            _set_rng_state(state["rng"], dist.device)
        bar = None
        if self.show and epochs - start > 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=epochs, initial=start, desc=f"{phase} epochs", dynamic_ncols=True)
        try:
            for epoch in range(start, epochs):
                t0 = time.perf_counter()
                tr = train_epoch(net, self.ds, opt, cfg, dist=dist, phase=phase, epoch=epoch, scaler=scaler,
                                 show=self.show, desc=f"{phase} {epoch + 1}/{epochs}")
                te = evaluate(model, self.ds, cfg, dist=dist, show=self.show, desc="test")
                rec = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": tr["loss"],
                       "train_accuracy": tr["accuracy"], "test_loss": te["loss"],
                       "test_accuracy": te["accuracy"], "seconds": time.perf_counter() - t0}
                sched.step()
                history.append(rec)
                hist = dict(extra.get("history", {}))
                hist[phase] = history
                self.save_state({**extra, "phase": phase, "epoch": epoch + 1,
                                 "model": ckpt.model_to_tensor(model), "optimizer": opt.state_dict(),
                                 "scheduler": sched.state_dict(),
                                 "scaler": scaler.state_dict() if scaler is not None else {},
                                 "rng": _rng_state(dist.device), "history": hist})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(train=f"{tr['accuracy']:.1f}%", test=f"{te['accuracy']:.1f}%")
                _exit_hook(phase, epoch + 1)
        finally:
            if bar is not None:
                bar.close()
        if reg is not None:
            reg.remove()
        opt.zero_grad(set_to_none=True)
        return history

    # -- the pipeline
    def run(self, resume: bool) -> Dict[str, Any]:
        job, dist = self.job, self.dist
        t_start = time.perf_counter()
        torch.manual_seed(job.seed)
        random.seed(job.seed)
        state = self.load_state() if resume else None
        self.ds = ds = load_data(job.data, image_size=job.image_size)
        S = ds.image_size
        example = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(job.seed)).to(dist.device)

        # ---- the dense model
        dense_hist: List[Dict[str, Any]] = []
        if job.checkpoint and not (state and state.get("phase") == "dense"):
            dense, spec = ckpt.load_model(job.checkpoint, model=job.model if job.model else None,
                                          num_classes=ds.num_classes, kwargs=job.model_kwargs,
                                          defaults=ckpt.model_spec(job.model, ds.num_classes, S, ds.mean,
                                                                   ds.std, job.model_kwargs, ds.classes, ds.spec))
            if int(spec.get("num_classes", ds.num_classes)) != ds.num_classes:
                raise UsageError(f"checkpoint {job.checkpoint} has {spec['num_classes']} classes, "
                                 f"the data {ds.num_classes}")
            spec.update(image_size=S, mean=list(ds.mean), std=list(ds.std), classes=list(ds.classes),
                        data=ds.spec)
            if ckpt.history_of(dense):
                raise UsageError(f"checkpoint {job.checkpoint} is already pruned; give the dense model")
        else:
            spec = ckpt.model_spec(job.model, ds.num_classes, S, ds.mean, ds.std, job.model_kwargs,
                                   ds.classes, ds.spec)
            dense = ckpt.build_model(job.model, ds.num_classes, job.model_kwargs)
        self.spec = spec
        factory = lambda: ckpt.build_model(spec["model"], spec["num_classes"], spec.get("kwargs"))  # noqa: E731
        dense_path = os.path.join(job.out, "dense.pt")

        in_finetune = state is not None and state.get("phase") in ("finetune", "pruned")
        t0 = time.perf_counter()
        if in_finetune:
            dense = ckpt.load_model(dense_path)[0]
            dense_hist = list(state["history"].get("dense", []))
        elif not job.checkpoint or (state and state.get("phase") == "dense"):
            if state is not None and state.get("phase") == "dense":
                dense = ckpt.model_from_tensor(state["model"], factory)
            _log(job, dist, f"training the dense {spec['model']} for {job.epochs} epochs on {ds.spec}")
            dense_hist = self.fit(dense, "dense", job.epochs, job.lr, state, {"history": {}})
        dense.to(dist.device)
        self.timing["dense_train_s"] = time.perf_counter() - t0
        if dist.main and not in_finetune:
            ckpt.save_model(dense, spec, dense_path)
        barrier(dist)
        dense_eval = (state["dense_eval"] if in_finetune else
                      evaluate(dense, ds, self.cfg, dist=dist, show=self.show, desc="test dense"))

        # ---- prune
        t0 = time.perf_counter()
        if in_finetune:
            pruned = ckpt.model_from_tensor(state["pruned_at_start"], factory).to(dist.device)
            scores = state["scores"]
            budget = state["budget"]
            pruned_eval0 = state["pruned_eval0"]
            ft_model = ckpt.model_from_tensor(state["model"], factory).to(dist.device)
        else:
            _log(job, dist, f"pruning with {job.method!r} to "
                 + (f"{job.flops:g} of the FLOPs" if job.flops is not None else
                    f"{job.params:g} of the parameters" if job.params is not None else f"ratio {job.ratio:g}"))
            dense.eval()
            data = _criterion_data(job, ds, dist)
            opts = dict(job.method_options)
            if job.method == "random":
                opts.setdefault("seed", job.seed)
            try:
                scores = {k: v.detach().double().cpu() for k, v in
                          pyprune.scores(dense, example, job.method, **({"data": data} if data else {}),
                                         **opts).items()}
            except (TypeError, ValueError) as e:
                raise UsageError(f"method {job.method!r}: {e}") from None
            pruned = ckpt.clone_model(dense)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                budget = prune_to_budget(pruned, example, job.method, data, flops=job.flops,
                                         params=job.params, ratio=job.ratio, options=opts,
                                         image_size=S)
            budget["warnings"] = [str(w.message) for w in caught]
            for msg in budget["warnings"]:
                _log(job, dist, f"warning: {msg}")
            summary = _prune_summary(pruned)
            if summary is not None:
                budget["summary"] = summary
            data = None
            pruned_eval0 = evaluate(pruned, ds, self.cfg, dist=dist, show=self.show, desc="test pruned")
            ft_model = pruned
            pruned = ckpt.clone_model(ft_model)  # the model right after surgery, for the report
        keep = ckpt.keep_indices(ft_model)
        budget["rank_hash"] = check_same(dist, {"keep": keep, "shapes": {
            k: list(v.shape) for k, v in ft_model.state_dict().items()}}, "the pruned model")
        self.timing["prune_s"] = time.perf_counter() - t0

        # ---- fine-tune
        t0 = time.perf_counter()
        ft_lr = job.finetune_lr if job.finetune_lr is not None else job.lr / 5
        extra = {"history": {"dense": dense_hist}, "dense_eval": dense_eval, "scores": scores,
                 "budget": budget, "pruned_eval0": pruned_eval0,
                 "pruned_at_start": ckpt.model_to_tensor(pruned)}
        if job.finetune_epochs > 0:
            _log(job, dist, f"fine-tuning the pruned model for {job.finetune_epochs} epochs")
        ft_hist = self.fit(ft_model, "finetune", job.finetune_epochs, ft_lr,
                           state if in_finetune else None, extra)
        self.timing["finetune_s"] = time.perf_counter() - t0
        pruned_eval = ft_hist[-1] if ft_hist else None
        final = (evaluate(ft_model, ds, self.cfg, dist=dist, show=self.show, desc="test pruned")
                 if pruned_eval is None else {"loss": pruned_eval["test_loss"],
                                              "accuracy": pruned_eval["test_accuracy"]})

        # ---- measure, report (rank 0)
        report: Dict[str, Any] = {}
        if dist.main:
            t0 = time.perf_counter()
            dense_cpu, ft_cpu = ckpt.clone_model(dense).cpu().float(), ckpt.clone_model(ft_model).cpu().float()
            dense_cpu.to(memory_format=torch.contiguous_format)
            ft_cpu.to(memory_format=torch.contiguous_format)
            _log(job, dist, "measuring latency")
            lat = latencies(dense_cpu, ft_cpu, (3, S, S), job.latency_batches, max_seconds=job.latency_seconds)
            self.timing["latency_s"] = time.perf_counter() - t0
            pruned_path = os.path.join(job.out, "pruned.pt")
            ckpt.save_model(ft_cpu, spec, pruned_path)
            dp, pp = _profile(dense_cpu, S), _profile(ft_cpu, S)
            self.timing["total_s"] = time.perf_counter() - t_start
            report = {
                "version": 1,
                "command": job.command,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "model": spec["model"], "model_kwargs": spec.get("kwargs", {}),
                "method": job.method, "budget": budget, "data": ds.spec,
                "num_classes": ds.num_classes, "image_size": S,
                "train_size": len(ds.train), "test_size": len(ds.test),
                "dense": {"accuracy": dense_eval["accuracy"], "loss": dense_eval["loss"],
                          "params": dp.params, "flops": dp.flops, "macs": dp.macs},
                "pruned": {"accuracy": final["accuracy"], "loss": final["loss"],
                           "accuracy_before_finetune": pruned_eval0["accuracy"],
                           "params": pp.params, "flops": pp.flops, "macs": pp.macs},
                "latency": lat,
                "layers": layer_widths(dense_cpu, ft_cpu),
                "history": {"dense": dense_hist, "finetune": ft_hist},
                "settings": job.to_json(),
                "timing": dict(self.timing),
                "machine": {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count(), "device": str(dist.device),
                            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                            "world_size": dist.world},
                "files": {"dense": "dense.pt", "pruned": "pruned.pt", "report": "report.json"},
            }
            from pyprune import report as rep
            report["files"].update(rep.write_all(report, job.out, scores=scores, keep=keep,
                                                 plots=job.plots))
            state_done = {"phase": "done", "epoch": 0}
            ckpt.atomic_save(state_done, self.state_path)
        barrier(dist)
        return report


def run_prune(job: PruneJob, *, resume: bool = False) -> Dict[str, Any]:
    """Run the job (see the module docstring); returns the report (empty on ranks > 0)."""
    if job.method is None:
        job.method = default_method()
    if job.flops is None and job.params is None and job.ratio is None:
        job.flops = 0.5
    _check_job(job)
    check_out_dir(job.out, resume=resume)
    if job.threads is not None:
        if job.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {job.threads}")
        torch.set_num_threads(job.threads)
    dist = setup(job.device)
    try:
        if dist.main:
            os.makedirs(job.out, exist_ok=True)
            if not resume:
                tmp = os.path.join(job.out, RUN_FILE + ".tmp")
                with open(tmp, "w") as f:
                    json.dump(job.to_json(), f, indent=1)
                os.replace(tmp, os.path.join(job.out, RUN_FILE))
        barrier(dist)
        return _Runner(job, dist).run(resume)
    finally:
        teardown(dist)


def load_job(out: str) -> PruneJob:
    """The settings of the run in ``out`` (for ``--resume``)."""
    path = os.path.join(out, RUN_FILE)
    try:
        with open(path) as f:
            return PruneJob.from_json(json.load(f))
    except FileNotFoundError:
        raise UsageError(f"--resume {out}: no interrupted run there ({RUN_FILE} missing)") from None
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"--resume {out}: cannot read {RUN_FILE}: {e}") from None
