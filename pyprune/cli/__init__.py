"""The ``pyprune`` command line (also ``python -m pyprune``): argument parsing only.

Subcommands: ``prune`` (train, prune to a budget, fine-tune, measure, report),
``profile``, ``eval``, ``bench`` and ``export``; the work is done by
:mod:`pyprune.engine`.  A user mistake prints one ``pyprune: error: ...`` line on
stderr and exits with status 2 (``PYPRUNE_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2 (argparse prints usage too)
        self.exit(EXIT_USAGE, f"pyprune: error: {message} (see {self.prog} --help)\n")


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return v


def _kv(items: Optional[List[str]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or progress messages")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present, "
                   "under torchrun the local rank's GPU)")


def build_parser() -> argparse.ArgumentParser:
    from pyprune.engine.job import DEFAULT_MODEL, PruneJob
    d = PruneJob(out="")
    ap = _Parser(prog="pyprune", description="Structured pruning of PyTorch CNNs: train, prune to a "
                 "FLOPs / parameter budget, fine-tune, measure and report.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("prune", help="train (or load), prune, fine-tune, evaluate, measure, report",
                       description="Train the dense model (unless --checkpoint), prune it with --method "
                       "to the budget, fine-tune, evaluate, measure latency and write the pruned model, "
                       "the dense checkpoint, report.json and PNG plots to --out. With no --data it runs "
                       "on an embedded procedural dataset (no download). Under torchrun it trains "
                       "data-parallel.")
    p.add_argument("--model", default=None, help=f"a pyprune.models name, torchvision:NAME or timm:NAME "
                   f"(default {DEFAULT_MODEL} --width 0.25)")
    p.add_argument("--width", type=float, default=None, help="width multiplier for models that take one "
                   "(vgg*, mobilenetv2)")
    p.add_argument("--method", default=None, help="pruning criterion (default hrank when available, else "
                   "l1); see `pyprune prune --list-methods`")
    p.add_argument("--list-methods", action="store_true", help="print the registered methods and exit")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--flops", type=_fraction, default=None, help="keep this fraction of the FLOPs "
                   "(default 0.5)")
    b.add_argument("--params", type=_fraction, default=None, help="keep this fraction of the parameters")
    b.add_argument("--ratio", type=_fraction, default=None, help="remove this fraction of the channels "
                   "of every prunable group (global fraction for slim)")
    p.add_argument("--data", default=None, help="synthetic[:train=N,test=N,size=S,seed=K] (default), "
                   "cifar10:DIR (python release) or imagefolder:DIR (train/ and val/ or test/)")
    p.add_argument("--checkpoint", default=None, help="start from this trained dense model (a file "
                   "written by pyprune, or a state_dict with --model) instead of training one")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"dense training epochs (default {d.epochs})")
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs,
                   help=f"fine-tuning epochs after pruning (default {d.finetune_epochs})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"SGD learning rate (default {d.lr})")
    p.add_argument("--finetune-lr", type=float, default=None, help="fine-tuning learning rate "
                   "(default lr / 5)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default=d.schedule)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--image-size", type=int, default=None, help="input size for imagefolder data "
                   "(default 224)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="image decoding worker processes (imagefolder)")
    p.add_argument("--prune-batches", type=int, default=d.prune_batches,
                   help="batches of training images for data-driven criteria (hrank, apoz, taylor)")
    p.add_argument("--slim-lambda", type=float, default=d.slim_lambda,
                   help="Network Slimming sparsity strength during dense training (--method slim)")
    p.add_argument("--option", "-O", action="append", metavar="KEY=VALUE",
                   help="an option of the criterion (repeatable; VALUE parsed as JSON when it can be)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's; "
                   "1 is faster on a machine busy with other work)")
    p.add_argument("--max-batches", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--latency-seconds", type=float, default=d.latency_seconds, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print report.json instead of the table")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the interrupted run in DIR "
                   "(its settings are read from DIR/run.json)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (required unless --resume)")
    _add_common(p)

    p = sub.add_parser("profile", help="per-layer parameters and FLOPs",
                       description="Per-layer parameter and MAC/FLOP table of a model or checkpoint.")
    p.add_argument("--model", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--width", type=float, default=None)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the "
                   "checkpoint's, else 32)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("eval", help="test accuracy of a checkpoint",
                       description="Evaluate a model file on the test split of --data "
                       "(default: the data the model was trained on).")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", default=None, help="needed for a bare state_dict")
    p.add_argument("--data", default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--json", action="store_true")
    _add_common(p)

    p = sub.add_parser("bench", help="time the native ops against torch (CPU, and GPU when present)",
                       description="Time pyprune.ops.matrix_rank and select_channels_ against torch "
                       "(checked equal first), or run the benchmark scripts of a source checkout.")
    p.add_argument("--scripts", action="store_true", help="run benchmarks/bench_rank.py and "
                   "bench_select.py of the source checkout")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("export", help="export a model file as TorchScript, torch.export or ONNX",
                       description="Export a model file; the exported program is checked against the "
                       "eager model's outputs.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", default=None, help="needed for a bare state_dict")
    p.add_argument("--format", required=True, choices=("torchscript", "exported", "onnx"))
    p.add_argument("--output", "-o", default=None, help="output file (default: beside the checkpoint)")
    return ap


def _prune(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from pyprune import criteria
    from pyprune.engine import UsageError
    from pyprune.engine.job import DEFAULT_MODEL, DEFAULT_MODEL_KWARGS, PruneJob, load_job, run_prune
    from pyprune.report import format_report

    if args.list_methods:
        for name in sorted(criteria.CRITERIA):
            print(f"{name:12s} data={criteria.info(name).data}")
        return 0
    if args.resume:
        if args.out and os.path.abspath(args.out) != os.path.abspath(args.resume):
            raise UsageError("--resume DIR continues the run in DIR; do not give another --out")
        if os.path.exists(args.resume) and not os.path.isdir(args.resume):
            raise UsageError(f"--resume {args.resume} is a file, not a run directory")
        job = load_job(args.resume)
        job.out = args.resume
        job.quiet = args.quiet
        report = run_prune(job, resume=True)
    else:
        if not args.out:
            raise UsageError("--out DIR is required (where the model, report and plots go)")
        if args.model is None and args.checkpoint:
            model, kwargs = None, ({"width": args.width} if args.width is not None else {})
        elif args.model is None:
            model, kwargs = DEFAULT_MODEL, dict(DEFAULT_MODEL_KWARGS)
            if args.width is not None:
                kwargs["width"] = args.width
        else:
            model, kwargs = args.model, ({"width": args.width} if args.width is not None else {})
        job = PruneJob(
            out=args.out, model=model, model_kwargs=kwargs, method=args.method, flops=args.flops,
            params=args.params, ratio=args.ratio, data=args.data, checkpoint=args.checkpoint,
            epochs=args.epochs, finetune_epochs=args.finetune_epochs, lr=args.lr,
            finetune_lr=args.finetune_lr, batch_size=args.batch_size, momentum=args.momentum,
            weight_decay=args.weight_decay, schedule=args.schedule, label_smoothing=args.label_smoothing,
            device=args.device, workers=args.workers, seed=args.seed, image_size=args.image_size,
            prune_batches=args.prune_batches, slim_lambda=args.slim_lambda,
            method_options=_kv(args.option), amp=False if args.no_amp else None,
            max_batches=args.max_batches, latency_seconds=args.latency_seconds,
            plots=not args.no_plots, threads=args.threads, quiet=args.quiet, command=["pyprune", *argv])
        report = run_prune(job)
    if report:  # rank 0
        print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
        if not args.json:
            print(f"\nwrote {', '.join(sorted(set(report['files'].values())))} to {job.out}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from pyprune.engine.tools import open_model, profile_model
    kwargs = {"width": args.width} if args.width is not None else {}
    net, spec = open_model(args.model, args.checkpoint, num_classes=args.num_classes,
                           image_size=args.image_size, kwargs=kwargs)
    prof = profile_model(net, spec)
    if args.json:
        print(json.dumps({"model": spec["model"], "image_size": spec["image_size"], "params": prof.params,
                          "macs": prof.macs, "flops": prof.flops,
                          "layers": [{"name": lp.name, "type": lp.type, "params": lp.params, "macs": lp.macs,
                                      "flops": lp.flops} for lp in prof.layers]}, indent=2))
    else:
        print(f"{spec['model']} at {spec['image_size']}x{spec['image_size']}")
        print(prof)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pyprune.engine.tools import eval_checkpoint
    res = eval_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size, device=args.device,
                          workers=args.workers, quiet=args.quiet, model=args.model)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['model']} on {res['data']} ({res['test_size']} test images): accuracy "
              f"{res['accuracy']:.2f}%, loss {res['loss']:.4f}, params {res['params']:,}, "
              f"FLOPs {res['flops']:,}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pyprune.engine.tools import bench
    from pyprune.report import text_table
    rows = bench(scripts=args.scripts, runs=args.runs, quick=args.quick)
    if args.scripts:
        return max((r["returncode"] for r in rows), default=0)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(text_table(["op", "device", "pyprune ms", "torch ms", "speedup"],
                         [[r["op"], r["device"], f"{r['pyprune_ms']:.3f}", f"{r['torch_ms']:.3f}",
                           f"{r['speedup']:.2f}x"] for r in rows], right=(2, 3, 4)))
        import torch
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.runs} runs")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pyprune.engine.tools import export
    info = export(args.checkpoint, args.format, args.output, model=args.model)
    err = info.get("max_abs_error")
    check = f"max abs error vs eager {err:.2e}" if err is not None else info.get("checked", "")
    print(f"wrote {info['path']} ({info['how']}; {check})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``pyprune`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed as one line)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from pyprune.engine import UsageError
    try:
        handler = {"prune": lambda: _prune(args, argv), "profile": lambda: _profile(args),
                   "eval": lambda: _eval(args), "bench": lambda: _bench(args),
                   "export": lambda: _export(args)}[args.command]
        return handler()
    except UsageError as e:
        print(f"pyprune: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("pyprune: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as e:
        # user-facing library validation errors (budget, options, files): one line
        if os.environ.get("PYPRUNE_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"pyprune: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
