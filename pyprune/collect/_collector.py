"""The streaming activation collector behind HRank, APoZ and mean activation."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..graph import GraphError
from ..graph_hooks import HookPoint, activation_points, conv_layers
from ..ops import matrix_rank

__all__ = ["STATISTICS", "collect", "iter_batches"]

_log = logging.getLogger("pyprune")

#: Statistics :func:`collect` can gather, each one value per channel of a hooked tensor.
STATISTICS = ("rank", "apoz", "mean")


def _batch_inputs(batch: Any, index: int, input_fn: Optional[Callable[[Any], Any]]) -> torch.Tensor:
    if input_fn is not None:
        x = input_fn(batch)
    elif isinstance(batch, torch.Tensor):
        x = batch
    elif isinstance(batch, (tuple, list)) and batch:
        x = batch[0]
    elif isinstance(batch, dict):
        for key in ("input", "inputs", "image", "images", "x"):
            if key in batch:
                x = batch[key]
                break
        else:
            raise ValueError(f"data: batch {index} is a dict without an 'input'/'image' key "
                             f"(keys {sorted(map(str, batch))}); pass input_fn=")
    else:
        raise TypeError(f"data must yield tensors or (inputs, targets) tuples/lists, batch {index} "
                        f"is {type(batch).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"data: the inputs of batch {index} must be a tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"data: batch {index} has shape {tuple(x.shape)}; expected a non-empty "
                         f"batch [N, ...]")
    return x


def iter_batches(data: Any, *, num_images: Optional[int] = 500,
                 input_fn: Optional[Callable[[Any], Any]] = None,
                 example_inputs: Any = None) -> Iterable[torch.Tensor]:
    """Input tensors of ``data``'s batches, stopping after ``num_images`` images.

    ``data`` is a tensor (one batch ``[N, ...]``), or any iterable of batches: tensors,
    ``(inputs, targets, ...)`` tuples or lists (the first element is the input), dicts
    with an ``"input"``/``"image"`` key, or whatever ``input_fn(batch)`` turns into an
    input tensor.  The last batch is sliced so that exactly ``num_images`` images are
    used (``None``: all of them).  When ``example_inputs`` is a tensor, every batch must
    have its number of dims and its channels (dim 1).  Bad ``data`` is a ``ValueError``
    naming ``data`` (a ``TypeError`` for ``data`` or a batch of the wrong type).
    """
    if data is None:
        raise ValueError("data is required: an iterable of batches (tensors, (inputs, targets) "
                         "tuples or a DataLoader), got None")
    if num_images is not None and (isinstance(num_images, bool) or not isinstance(num_images, int)
                                   or num_images < 1):
        raise ValueError(f"num_images must be a positive int or None, got {num_images!r}")
    if isinstance(data, torch.Tensor):
        data = [data]
    try:
        it = iter(data)
    except TypeError:
        raise TypeError(f"data must be an iterable of batches (tensors, (inputs, targets) pairs "
                        f"or a DataLoader), got {type(data).__name__}") from None
    ref = example_inputs if isinstance(example_inputs, torch.Tensor) else None
    seen = 0
    index = -1
    for index, batch in enumerate(it):
        x = _batch_inputs(batch, index, input_fn)
        if ref is not None and (x.dim() != ref.dim() or (x.dim() > 1 and x.shape[1] != ref.shape[1])):
            raise ValueError(f"data: batch {index} has shape {tuple(x.shape)}, which does not match "
                             f"example_inputs of shape {tuple(ref.shape)} (same dims and channels "
                             f"expected)")
        if num_images is not None and seen + x.shape[0] > num_images:
            x = x[:num_images - seen]
        seen += x.shape[0]
        yield x
        if num_images is not None and seen >= num_images:
            return
    if index < 0:
        raise ValueError(f"data is empty: {type(data).__name__} yielded no batch")


class _Point:
    """Running sums of one hooked tensor (shared by every conv scored on it)."""

    __slots__ = ("point", "convs", "channels", "want_rank", "want_zeros", "want_sum",
                 "rank_sum", "neg", "zeros", "sums", "images", "elems", "skip_rank", "device")

    def __init__(self, point: HookPoint, convs: List[str], channels: int, stats: Sequence[str],
                 device: torch.device):
        self.point = point
        self.convs = convs
        self.channels = channels
        self.want_rank = "rank" in stats
        self.want_zeros = "apoz" in stats
        self.want_sum = "mean" in stats or "apoz" in stats  # the sum also detects NaN/Inf
        # The running sums are allocated here, before the pass, and only ever added to in
        # place: a long-lived tensor first allocated inside a hook, between the batch's
        # activations, splits a freed activation-sized hole of the host heap, so later
        # batches need fresh memory (ResNet-56's collection peaked at up to 1.9x the
        # plain forward's resident memory that way).
        def zeros(shape: Tuple[int, ...], dtype: torch.dtype, want: bool) -> Optional[torch.Tensor]:
            return torch.zeros(shape, dtype=dtype, device=device) if want else None

        self.rank_sum = zeros((channels,), torch.int64, self.want_rank)
        self.neg = zeros((), torch.int64, self.want_rank)
        self.zeros = zeros((channels,), torch.int64, self.want_zeros)
        self.sums = zeros((channels,), torch.float64, self.want_sum)
        self.device = torch.device(device)
        self.images = 0
        self.elems = 0
        self.skip_rank = False

    def _to(self, device: torch.device) -> None:
        for name in ("rank_sum", "neg", "zeros", "sums"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        self.device = device

    def update(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or t.dim() < 2 or t.shape[1] != self.channels:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{self.point.module} (call {self.point.call}) gives {shape}, not the "
                             f"[N, {self.channels}, ...] activation of {self.convs[0]}")
        t = t.detach()
        if t.device != self.device:  # a model split over devices: keep the sums beside the tensor
            self._to(t.device)
        n = t.shape[0]
        per_image = t[0, 0].numel() if t.numel() else 0
        if self.want_rank and t.dim() != 4:
            self.skip_rank = True
        if self.want_rank and not self.skip_rank:
            r = matrix_rank(t, check_finite=False)  # (N, C) int64 on t's device, no host sync
            self.rank_sum += r.sum(0)
            self.neg += (r < 0).sum()
            del r
        if self.want_sum or self.want_zeros:
            dims = (0,) + tuple(range(2, t.dim()))
            if self.want_zeros:
                self.zeros += (t == 0).sum(dims)
            self.sums += t.sum(dims, dtype=torch.float64)
        self.images += n
        self.elems += n * per_image

    def packed(self) -> List[torch.Tensor]:
        """This point's sums as float64 tensors (for one all-reduce)."""
        parts: List[torch.Tensor] = []
        for t, want in ((self.rank_sum, self.want_rank and not self.skip_rank),
                        (self.zeros, self.want_zeros), (self.sums, self.want_sum)):
            if want:
                parts.append(t.double())
        if self.want_rank and not self.skip_rank:
            parts.append(self.neg.double().reshape(1))
        return parts

    def unpack(self, flat: torch.Tensor) -> None:
        c, at = self.channels, 0
        if self.want_rank and not self.skip_rank:
            self.rank_sum, at = flat[at:at + c], at + c
        if self.want_zeros:
            self.zeros, at = flat[at:at + c], at + c
        if self.want_sum:
            self.sums, at = flat[at:at + c], at + c
        if self.want_rank and not self.skip_rank:
            self.neg = flat[at]


def _gather(points: List[_Point]) -> None:
    """Bring every point's sums to the host in one copy (one device sync at the end).

    Under ``torch.distributed`` (more than one process) the sums and counts are first
    summed over the processes of the default group with one ``all_reduce``.
    """
    packs = [p.packed() for p in points]
    parts = [t.reshape(-1) for pk in packs for t in pk]
    devices = {t.device for t in parts}
    device = devices.pop() if len(devices) == 1 else torch.device("cpu")
    counts = torch.tensor([[p.images, p.elems] for p in points], dtype=torch.float64).reshape(-1)
    flat = torch.cat([t.to(device) for t in parts] + [counts.to(device)]) if parts else counts
    if _distributed():
        import torch.distributed as dist

        if dist.get_backend() == "nccl" and flat.device.type != "cuda":
            flat = flat.cuda()
        dist.all_reduce(flat)
    flat = flat.cpu()
    at = 0
    for p, pk in zip(points, packs):
        n = sum(t.numel() for t in pk)
        p.unpack(flat[at:at + n])
        at += n
    for i, p in enumerate(points):
        p.images, p.elems = int(flat[at + 2 * i]), int(flat[at + 2 * i + 1])


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def collect(model: nn.Module, data: Any, statistics: Sequence[str] = ("rank",), *,
            example_inputs: Any = None, layers: Optional[Iterable[Union[str, nn.Module]]] = None,
            num_images: Optional[int] = 500, progress: bool = True,
            input_fn: Optional[Callable[[Any], Any]] = None,
            points: Optional[Dict[str, HookPoint]] = None,
            ) -> Dict[str, Dict[str, torch.Tensor]]:
    """Per-channel activation statistics of convolutions, in one pass over ``data``.

    Every selected convolution (``layers``: names or modules; default every conv) is
    scored on the activation that follows it, found by
    :func:`pyprune.graph_hooks.activation_points` (which documents the rule: the ReLU
    after ``conv -> BN``; in a ResNet basic block the ReLU after the residual add, for
    ``conv2`` and a projection shortcut alike; the conv/BN output when no activation
    follows).  ``statistics`` chooses among:

    * ``"rank"``: HRank's mean rank of each channel's feature maps (one
      :func:`pyprune.ops.matrix_rank` call per hooked tensor and batch, on its device,
      over all ``N*C`` maps; torch.linalg.matrix_rank's tolerance rule);
    * ``"apoz"``: the fraction of exact zeros in each channel's maps (APoZ);
    * ``"mean"``: each channel's mean activation.

    The model runs in eval mode under ``torch.no_grad``; each module's training flag is
    restored afterwards (also on error) and nothing else changes.  Hooks keep only
    per-channel running sums and counts (no activation survives its hook).  On CUDA no
    host synchronization happens per batch: NaN/Inf maps are detected once, at the end
    (``ValueError`` naming ``data``).  When a ``torch.distributed`` process group with
    more than one process is initialized, sums and counts are all-reduced at the end,
    so every process gets the statistics of all processes' data (``num_images`` then
    counts the images of each process).  A tqdm progress bar appears when the pass
    takes more than 2 seconds (``progress=False``: never).

    ``data`` and ``num_images``/``input_fn``: see :func:`iter_batches`.  ``example_inputs``
    (default: the first image of the first batch) is traced to find the hook points
    (or pass ``points``, a ``{conv: HookPoint}`` dict).

    Returns ``{statistic: {conv name: float64 CPU tensor [out_channels]}}``; a conv
    whose hooked tensor was never produced (an unused branch) is left out, and ranks
    only exist for 2-D feature maps (``[N, C, H, W]`` activations).
    """
    stats = (statistics,) if isinstance(statistics, str) else tuple(statistics)
    for s in stats:
        if s not in STATISTICS:
            raise ValueError(f"statistics must be among {STATISTICS}, got {s!r}")
    if not stats:
        raise ValueError("statistics is empty")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    batches = iter_batches(data, num_images=num_images, input_fn=input_fn,
                           example_inputs=example_inputs)
    modules = dict(model.named_modules())
    flags = [(m, m.training) for m in model.modules()]
    handles: List[Any] = []
    try:
        model.eval()
        with torch.no_grad():
            gen = iter(batches)
            x0 = next(gen)  # raises the ValueError of empty / bad data
            device = _model_device(model, x0)
            if points is None:
                if example_inputs is not None:
                    points = activation_points(model, example_inputs, layers=layers)
                else:  # traced on the first image of data
                    try:
                        points = activation_points(model, x0[:1].to(device), layers=layers)
                    except GraphError as e:
                        raise ValueError(f"data: batch 0 of shape {tuple(x0.shape)} could not be "
                                         f"run through the model: {e}") from e
            elif layers is not None:
                sel = set(conv_layers(model, layers))
                points = {k: v for k, v in points.items() if k in sel}
            by_key: Dict[Tuple[str, int, str, int], _Point] = {}
            for conv, pt in points.items():
                p = by_key.get(pt.key)
                if p is None:
                    ch = _out_channels(modules[conv])
                    p = by_key[pt.key] = _Point(pt, [conv], ch, stats, device)
                else:
                    p.convs.append(conv)
            plist = list(by_key.values())
            handles = _install(modules, plist)
            bar = _progress(progress, num_images)
            start = time.perf_counter()
            try:
                index = 0
                x = x0
                while x is not None:
                    _run(model, x.to(device, non_blocking=True), index, handles)
                    if bar is not None:
                        bar.update(int(x.shape[0]))
                    index += 1
                    x = next(gen, None)
            finally:
                if bar is not None:
                    bar.close()
            _log.debug("collected %s over %d batches in %.2fs", stats, index,
                       time.perf_counter() - start)
    finally:
        for h in handles[1:] if handles else ():
            h.remove()
        for m, flag in flags:
            m.training = flag
    _gather(plist)
    return _results(plist, stats)


def _model_device(model: nn.Module, x: torch.Tensor) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return x.device


def _out_channels(m: nn.Module) -> int:
    if isinstance(m, nn.modules.conv._ConvNd):
        return int(m.out_channels)
    w = getattr(m, "weight", None)
    return int(w.shape[0])


class _Calls:
    """Call counters of the hooked modules (reset before every batch)."""

    def __init__(self) -> None:
        self.count: Dict[int, int] = {}

    def reset(self) -> None:
        for k in self.count:
            self.count[k] = 0

    def remove(self) -> None:  # handles[0]: not a hook
        pass


def _install(modules: Dict[str, nn.Module], plist: List[_Point]) -> List[Any]:
    calls = _Calls()
    handles: List[Any] = [calls]
    table: Dict[Tuple[str, str], Dict[int, List[Tuple[int, _Point]]]] = {}
    for p in plist:
        pt = p.point
        table.setdefault((pt.module, pt.where), {}).setdefault(pt.call, []).append((pt.arg, p))
    for (name, where), by_call in table.items():
        m = modules[name]
        key = id(m) * 2 + (where == "input")
        calls.count[key] = 0

        if where == "output":
            def hook(mod, args, out, _k=key, _b=by_call):
                i = calls.count[_k]
                calls.count[_k] = i + 1
                for _, p in _b.get(i, ()):
                    p.update(out)
            handles.append(m.register_forward_hook(hook))
        else:
            def pre(mod, args, _k=key, _b=by_call):
                i = calls.count[_k]
                calls.count[_k] = i + 1
                for arg, p in _b.get(i, ()):
                    p.update(args[arg] if arg < len(args) else None)
            handles.append(m.register_forward_pre_hook(pre))
    return handles


def _run(model: nn.Module, x: torch.Tensor, index: int, handles: List[Any]) -> None:
    handles[0].reset()
    try:
        model(x)
    except ValueError as e:
        if "activation of" in str(e):
            raise ValueError(f"data: batch {index} of shape {tuple(x.shape)}: {e}") from e
        raise ValueError(f"data: batch {index} of shape {tuple(x.shape)} could not be run "
                         f"through the model: {e}") from e
    except (RuntimeError, TypeError, IndexError) as e:
        raise ValueError(f"data: batch {index} of shape {tuple(x.shape)} could not be run "
                         f"through the model: {e}") from e


def _progress(progress: bool, total: Optional[int]):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, unit="img", desc="pyprune: collecting activations", delay=2.0,
                leave=False)


def _results(plist: List[_Point], stats: Sequence[str]) -> Dict[str, Dict[str, torch.Tensor]]:
    out: Dict[str, Dict[str, torch.Tensor]] = {s: {} for s in stats}
    for p in plist:
        if p.images == 0:
            _log.info("%s was never called: no statistics for %s", p.point.module, p.convs)
            continue
        if "rank" in stats and not p.skip_rank and int(p.neg) > 0:
            raise ValueError(f"data: {int(p.neg)} feature map(s) of {p.point.tensor or p.point.module} "
                             f"(scored for {p.convs[0]}) hold NaN or Inf")
        if p.sums is not None:
            sums = p.sums.double().cpu()
            if not bool(torch.isfinite(sums).all()):
                raise ValueError(f"data: the activation {p.point.tensor or p.point.module} "
                                 f"(scored for {p.convs[0]}) holds NaN or Inf")
        res: Dict[str, torch.Tensor] = {}
        if "rank" in stats and not p.skip_rank:
            res["rank"] = p.rank_sum.double().cpu() / p.images
        elif "rank" in stats:
            _log.info("%s: activation is not [N, C, H, W]; no ranks", p.convs)
        if "apoz" in stats:
            res["apoz"] = p.zeros.double().cpu() / max(p.elems, 1)
        if "mean" in stats:
            res["mean"] = p.sums.double().cpu() / max(p.elems, 1)
        for s, v in res.items():
            for conv in p.convs:
                out[s][conv] = v.clone() if len(p.convs) > 1 else v
    return out
