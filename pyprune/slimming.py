"""Network Slimming sparsity training: an L1 penalty on BatchNorm scales.

Liu et al., "Learning Efficient Convolutional Networks through Network Slimming"
(ICCV 2017) train with ``loss + s * sum |gamma|`` over the BatchNorm scales, by adding
the subgradient ``s * sign(gamma)`` to every BatchNorm weight's gradient after
``loss.backward()`` (``s = 1e-4`` for VGG, ``1e-5`` for ResNet and DenseNet in the
paper), then prune the channels of small ``|gamma|`` with one global threshold
(``pyprune.prune(model, x, method="slim", ratio=0.7)``) and fine-tune.

Attach the penalty once::

    reg = pyprune.slimming(model, lam=1e-5, optimizer=opt)   # runs inside opt.step()
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()                     # grad += lam * sign(gamma), then the update
    reg.remove()                       # plain training again

or without ``optimizer``, call :meth:`Slimming.step` yourself after ``backward()``
(and after ``scaler.unscale_(opt)`` under AMP)::

    reg = pyprune.slimming(model, lam=1e-4)
    loss.backward(); reg.step(); opt.step()

Design:

* **One fused operation.** The penalty is ``torch._foreach_add_(grads,
  torch._foreach_sign(gammas), alpha=lam)`` over all covered BatchNorms at once, not a
  Python loop of small ops per layer (about 10x cheaper than Torch-Pruning's
  ``BNScalePruner.regularize`` on a ResNet-56, see ``benchmarks/bench_slimming.py``).
  BatchNorms whose weight has no gradient this step (frozen, unused) are skipped.
* **AMP.** With ``optimizer=`` the penalty runs in a step pre-hook of the optimizer, so
  under ``torch.amp.GradScaler`` it sees the gradients ``scaler.step(opt)`` has already
  unscaled, and a step the scaler skips (inf/NaN gradients) adds nothing.  Called by
  hand, :meth:`Slimming.step` must come after ``scaler.unscale_(opt)``, or be given the
  current scale (``reg.step(scale=scaler.get_scale())``) to add to still-scaled
  gradients.
* **DistributedDataParallel.** The penalty is added after ``backward()`` (by hand or in
  ``opt.step()``), when DDP has already averaged the gradients; the scales are the same
  on every process, so every process adds the same term and the replicas stay equal.
  Pass the DDP-wrapped model or its ``.module``: the same BatchNorms are found.
* **Coverage.** With ``example_inputs`` the penalty covers every BatchNorm that scales
  channels of a prunable group of :func:`pyprune.graph.build_graph`: sparsity is not
  pushed on channels that cannot be removed anyway.  Without ``example_inputs`` it
  covers every affine BatchNorm of the model, as the reference does.
* **Pruning.** BatchNorm parameters are held by identity; pyprune's surgery shrinks
  them in place, so the same regularizer keeps working on the pruned model (prune,
  fine-tune with the penalty, prune again).  If you replace a covered BatchNorm's
  ``weight`` with a new tensor, build a new regularizer.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn as nn

__all__ = ["Slimming", "slimming"]

_BN = nn.modules.batchnorm._BatchNorm


def _unwrap(model: nn.Module) -> nn.Module:
    parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, parallel) else model


def _check_lam(lam: Any) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or \
            not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    return float(lam)


class Slimming:
    """The L1 penalty ``lam * sum |gamma|`` on the scales of a set of BatchNorms.

    Build it with :func:`slimming`.  ``lam`` can be changed between steps (a schedule).
    ``names`` lists the covered BatchNorms (qualified names in the model given).
    """

    def __init__(self, model: nn.Module, lam: float = 1e-4, example_inputs: Any = None, *,
                 optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.lam = lam
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        bns: List[Tuple[str, nn.Module]] = [
            (n, m) for n, m in model.named_modules()
            if isinstance(m, _BN) and m.affine and isinstance(m.weight, torch.Tensor)]
        if example_inputs is not None:
            from .graph import build_graph  # the graph only when coverage is asked for

            inner = _unwrap(model)
            graph = build_graph(inner, example_inputs)
            names = {id(m): n for n, m in inner.named_modules()}
            bns = [(n, m) for n, m in bns
                   if any(g.prunable for g in graph.groups_of(names.get(id(m), "")))]
        seen = set()
        self.names: List[str] = []
        self._params: List[torch.Tensor] = []
        for n, m in bns:
            if id(m.weight) in seen:  # a BatchNorm (or its weight) shared by two paths
                continue
            seen.add(id(m.weight))
            self.names.append(n)
            self._params.append(m.weight)
        if not self._params:
            raise ValueError("slimming: the model has no affine BatchNorm"
                             + (" in a prunable group" if example_inputs is not None else ""))
        self._handle: Any = None
        self._removed = False
        if optimizer is not None:
            owned = {id(p) for grp in optimizer.param_groups for p in grp["params"]}
            missing = [n for n, p in zip(self.names, self._params) if id(p) not in owned]
            if missing:
                raise ValueError(f"optimizer does not update the BatchNorm weights "
                                 f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
            self._handle = optimizer.register_step_pre_hook(self._pre_step)

    # ---------------------------------------------------------------------------------
    @property
    def lam(self) -> float:
        """The penalty's weight ``s`` (``grad += lam * sign(gamma)``)."""
        return self._lam

    @lam.setter
    def lam(self, value: float) -> None:
        self._lam = _check_lam(value)

    @property
    def hooked(self) -> bool:
        """Whether the penalty runs inside ``optimizer.step()`` (built with ``optimizer=``)."""
        return self._handle is not None

    def parameters(self) -> Iterator[torch.Tensor]:
        """The covered BatchNorm weights (the model's own parameters)."""
        return iter(self._params)

    def step(self, scale: Union[float, torch.Tensor, None] = None) -> None:
        """Add ``lam * sign(gamma)`` to the gradient of every covered BatchNorm weight.

        Call after ``backward()`` and before ``optimizer.step()`` (not needed when built
        with ``optimizer=``: that would add the penalty twice).  ``scale``: multiply the
        term by this (``scaler.get_scale()`` when the gradients are still scaled by a
        GradScaler); a 0-dim tensor is used without a host synchronization.
        """
        if self._removed:
            raise RuntimeError("this slimming regularizer was removed")
        if scale is not None:
            if isinstance(scale, torch.Tensor):
                if scale.numel() != 1:
                    raise ValueError(f"scale must be a number or a one-element tensor, got "
                                     f"shape {tuple(scale.shape)}")
            elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
                raise TypeError(f"scale must be a number or a tensor, got "
                                f"{type(scale).__name__}")
        grads, weights = [], []
        for p in self._params:
            g = p.grad
            if g is not None:
                grads.append(g)
                weights.append(p)
        if not grads or self._lam == 0.0:
            return
        with torch.no_grad():
            signs = torch._foreach_sign(weights)
            if scale is None:
                torch._foreach_add_(grads, signs, alpha=self._lam)
            elif isinstance(scale, torch.Tensor):
                torch._foreach_mul_(signs, scale.reshape(()) * self._lam)
                torch._foreach_add_(grads, signs)
            else:
                torch._foreach_add_(grads, signs, alpha=self._lam * float(scale))

    def penalty(self) -> torch.Tensor:
        """``lam * sum |gamma|`` over the covered BatchNorms (for logging; no grad)."""
        with torch.no_grad():
            norms = torch._foreach_norm(self._params, 1)
            return torch.stack([n.to(torch.float64).cpu() for n in norms]).sum() * self._lam

    def remove(self) -> None:
        """Detach the regularizer (its optimizer hook, if any); further ``step()`` calls
        raise.  Idempotent."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._removed = True

    def __enter__(self) -> "Slimming":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.step()

    def __repr__(self) -> str:
        state = "removed" if self._removed else ("in optimizer.step()" if self.hooked else
                                                 "manual step()")
        return f"Slimming(lam={self._lam:g}, {len(self._params)} BatchNorms, {state})"


def slimming(model: nn.Module, lam: float = 1e-4, example_inputs: Any = None, *,
             optimizer: Optional[torch.optim.Optimizer] = None) -> Slimming:
    """Attach the Network Slimming penalty ``lam * sum |gamma|`` to ``model``'s BatchNorms.

    ``lam``: the paper's ``s`` (1e-4 for VGG, 1e-5 for ResNet / DenseNet).
    ``example_inputs``: if given, only BatchNorms scaling channels of prunable groups
    (:func:`pyprune.graph.build_graph`) are covered; else every affine BatchNorm.
    ``optimizer``: if given, the penalty is added inside every ``optimizer.step()``
    (a step pre-hook: correct under GradScaler and DDP, nothing to call); else call
    :meth:`Slimming.step` after each ``backward()``.  ``reg.remove()`` detaches it.
    See :mod:`pyprune.slimming` for the design.
    """
    return Slimming(model, lam, example_inputs, optimizer=optimizer)
