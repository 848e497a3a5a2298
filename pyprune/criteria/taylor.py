"""``"taylor"``: first-order Taylor importance (Molchanov et al., CVPR 2019).

Molchanov, Mallya, Tyree, Frosio and Kautz, "Importance Estimation for Neural Network
Pruning" (CVPR 2019), estimate the loss change of removing a set of parameters ``S`` by
the first-order Taylor expansion and score it by its square,
``I_S = (sum_{s in S} g_s w_s)^2`` (their Eq. 8, "Taylor FO"), with ``g`` the gradient of
the loss on one minibatch, accumulated over minibatches.  Here the score of an output
channel ``c`` of a conv / linear layer is::

    score[c] = sum over batches b of ( sum_{s in S_c} g_s^(b) w_s )^2

with ``S_c`` chosen by ``variant``:

* ``"bn"`` (default): the scale and shift ``gamma_c, beta_c`` of the BatchNorm right
  after the layer: the paper's best variant, "FO on BN" (a gate after BatchNorm),
  which equals the gradient of the loss with respect to a gate multiplying the
  channel's BatchNorm output.  Layers with no BatchNorm directly on their output use
  the ``"weight"`` set (all layers do when ``example_inputs`` is None: the BatchNorm
  after each layer is found in the graph traced on them).
* ``"weight"``: the channel's filter and bias (the paper's "Weight" variant, the
  importance of the filter as a whole).

The gradients come from ``loss_fn(model(inputs), targets)`` (default
``torch.nn.functional.cross_entropy``, mean over the batch) on the first
``num_batches`` batches of ``data``, each an ``(inputs, targets)`` pair (a list or
tuple; ``inputs`` a tensor or a tuple of positional inputs), moved to the model's
device.  The model runs in **eval mode** (BatchNorm uses its running statistics and
updates nothing, dropout is off) and its training flag is restored afterwards; the
gradients are taken with ``torch.autograd.grad``, so the model's ``.grad`` tensors are
never touched.  Under an initialized ``torch.distributed`` process group every process
scores its own batches and the sums are all-reduced: the result equals one process
over all the batches.  A channel whose removal leaves the loss unchanged (all of its
outgoing weights zero, or zero BatchNorm scale and shift) scores exactly zero.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..graph import build_graph
from . import register

__all__ = ["taylor"]

_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
_BN = nn.modules.batchnorm._BatchNorm


def _follower_bns(model: nn.Module, example_inputs: Any) -> Dict[int, nn.Module]:
    """``{id(layer): BatchNorm applied directly to its output}`` (the BatchNorm's weight
    member has exactly the layer's output channel elements).  A DataParallel /
    DistributedDataParallel wrapper is traced through its ``.module``."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    graph = build_graph(model, example_inputs)
    mods = dict(model.named_modules())
    by_elems: Dict[Tuple[int, ...], nn.Module] = {}
    for name, (elems, block) in graph.out_maps.items():
        if block == 1 and isinstance(mods.get(name), _LAYERS):
            by_elems.setdefault(tuple(elems), mods[name])
    out: Dict[int, nn.Module] = {}
    for mem in graph.tensor_members:
        if mem.role != "out" or mem.dim != 0 or mem.block != 1 or \
                not mem.name.endswith(".weight"):
            continue
        bn = mods.get(mem.name[: -len(".weight")])
        if not isinstance(bn, _BN) or not bn.affine:
            continue
        layer = by_elems.get(tuple(mem.elems))
        if layer is not None and id(layer) not in out:
            out[id(layer)] = bn
    return out


def _check_batch(i: int, batch: Any) -> Tuple[Tuple[Any, ...], Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        what = (f"a {type(batch).__name__} of length {len(batch)}"
                if isinstance(batch, (tuple, list)) else f"a {type(batch).__name__}")
        raise ValueError(f"data: method 'taylor' needs (inputs, targets) batches; batch {i} "
                         f"is {what}")
    inputs, targets = batch
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    return inputs, targets


def _per_channel(gw: torch.Tensor, n: int, tconv: Optional[nn.Module]) -> torch.Tensor:
    """Sum of ``g * w`` over each output channel's entries (float64)."""
    if tconv is not None and gw.dim() > 1:
        g = tconv.groups
        gw = gw.reshape(g, gw.shape[0] // g, gw.shape[1], -1).transpose(1, 2)
    return gw.reshape(n, -1).sum(1, dtype=torch.float64)


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor) and obj.device != device:
        return obj.to(device, non_blocking=True)
    return obj


@register("taylor", data="required", global_threshold=False, normalize="mean")
def taylor(model: nn.Module, example_inputs: Any = None, data: Optional[Iterable[Any]] = None,
           loss_fn: Optional[Callable[..., torch.Tensor]] = None, num_batches: Optional[int] = 10,
           variant: str = "bn", progress: bool = True) -> Dict[str, torch.Tensor]:
    """First-order Taylor scores of every conv / linear layer's output channels.

    ``data``: iterable of ``(inputs, targets)`` batches (required); ``loss_fn(outputs,
    targets)``: default cross-entropy; ``num_batches``: how many batches to use (None:
    all); ``variant``: ``"bn"`` or ``"weight"`` (see :mod:`.taylor`); ``progress``:
    a tqdm bar if the pass takes more than two seconds.  Returns float64 CPU tensors.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if data is None:
        raise ValueError("data is required for method 'taylor': an iterable of "
                         "(inputs, targets) batches, got None")
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(f"data must be an iterable of (inputs, targets) batches, got "
                        f"{type(data).__name__}")
    if loss_fn is None:
        loss_fn = F.cross_entropy
    elif not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if num_batches is not None and (isinstance(num_batches, bool) or
                                    not isinstance(num_batches, int) or num_batches < 1):
        raise ValueError(f"num_batches must be an int >= 1 or None, got {num_batches!r}")
    if variant not in ("bn", "weight"):
        raise ValueError(f"variant must be 'bn' or 'weight', got {variant!r}")

    # the parameter set S_c of every layer: [(tensor, how its slices map to channels)]
    layers: List[Tuple[str, List[torch.Tensor], int]] = []  # name, params, n channels
    follow = _follower_bns(model, example_inputs) if variant == "bn" and \
        example_inputs is not None else {}
    seen = set()
    for name, m in model.named_modules():
        if not isinstance(m, _LAYERS) or id(m) in seen:
            continue
        seen.add(id(m))
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or not w.dtype.is_floating_point:
            continue
        bn = follow.get(id(m))
        if bn is not None:
            ps = [bn.weight] + ([bn.bias] if isinstance(bn.bias, torch.Tensor) else [])
            n = bn.weight.numel()
        else:
            ps = [w] + ([m.bias] if isinstance(getattr(m, "bias", None), torch.Tensor) else [])
            n = m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
        layers.append((name, ps, n))
    if not layers:
        raise ValueError("method 'taylor': the model has no conv or linear layer to score")
    # transposed convs keep output channels on dim 1 of their weight (per group)
    tmods = {id(m.weight): m for m in model.modules()
             if isinstance(m, nn.modules.conv._ConvTransposeNd)}
    params: List[torch.Tensor] = []
    index: Dict[int, int] = {}
    for _, ps, _ in layers:
        for p in ps:
            if id(p) not in index:
                index[id(p)] = len(params)
                params.append(p)
    device = params[0].device
    sums = [torch.zeros(n, dtype=torch.float64, device=device) for _, _, n in layers]

    # a DDP-wrapped model: no gradient reduction is prepared for these forwards
    sync_off = model.no_sync if isinstance(model, nn.parallel.DistributedDataParallel) \
        else contextlib.nullcontext
    training = model.training
    flags = [p.requires_grad for p in params]
    count = 0
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        it = iter(data)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=num_batches, desc="pyprune: taylor", unit="batch", delay=2.0,
                       leave=False)
        try:
            for i, batch in enumerate(it):
                if num_batches is not None and i >= num_batches:
                    break
                inputs, targets = _check_batch(i, batch)
                inputs = tuple(_to(x, device) for x in inputs)
                targets = _to(targets, device)
                try:
                    with torch.enable_grad(), sync_off():
                        loss = loss_fn(model(*inputs), targets)
                except (RuntimeError, ValueError, IndexError, TypeError) as e:
                    shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                              for x in inputs]
                    tshape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else \
                        type(targets).__name__
                    raise ValueError(f"data: batch {i} (inputs {shapes}, targets {tshape}) "
                                     f"could not be scored: {type(e).__name__}: {e}") from e
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise ValueError(f"loss_fn must return a scalar tensor, got "
                                     f"{type(loss).__name__}"
                                     + (f" of shape {tuple(loss.shape)}"
                                        if isinstance(loss, torch.Tensor) else ""))
                grads = torch.autograd.grad(loss.reshape(()), params, allow_unused=True)
                with torch.no_grad():
                    for (name, ps, n), acc in zip(layers, sums):
                        t = acc.new_zeros(n)
                        for p in ps:
                            g = grads[index[id(p)]]
                            if g is not None:
                                t += _per_channel(g.detach() * p.detach(), n, tmods.get(id(p)))
                        acc += t * t
                count += 1
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(training)
    if count == 0:
        raise ValueError("data is empty: method 'taylor' needs at least one "
                         "(inputs, targets) batch")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        flat = torch.cat(sums)
        dist.all_reduce(flat)
        sums = list(torch.split(flat, [n for _, _, n in layers]))
    out: Dict[str, torch.Tensor] = {}
    for (name, _, _), s in zip(layers, sums):
        s = s.cpu()
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"method 'taylor': non-finite scores for {name} (the loss or its "
                             f"gradients overflowed)")
        out[name] = s
    return out
