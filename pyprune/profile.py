"""Parameter and multiply-accumulate counts, per layer and in total.

:func:`profile` runs one forward pass of ``model`` on ``example_inputs`` (in eval mode,
under ``torch.no_grad``; each module's ``training`` flag is restored afterwards) with a
forward hook on every leaf module, and returns a :class:`Profile`.

Counting convention
-------------------
* **MACs** (multiply-accumulates) are counted for convolutions and linear layers only:

  - ``Conv1d/2d/3d`` (grouped and depthwise included):
    ``output elements * (in_channels / groups) * prod(kernel_size)``;
  - ``ConvTranspose1d/2d/3d``: ``input elements * (out_channels / groups) * prod(kernel_size)``
    (every input element is multiplied into one kernel slice);
  - ``Linear``: ``output elements * in_features``.

  Biases, BatchNorm, activations, pooling, dropout, additions and concatenations
  count 0, and so does any layer type not listed (a leaf module of unknown type is
  still listed, with 0 MACs). Only module calls are seen: a functional
  ``F.conv2d``/``F.linear`` inside a ``forward`` is not counted.
* **FLOPs** are ``2 * MACs`` (one multiply and one add per MAC).
* **Per sample**: MACs and FLOPs are divided by the batch size, the size of dimension
  0 of the first tensor in ``example_inputs``. ``output_shape`` is reported as observed
  (it includes the batch dimension).
* **Params** is the number of elements of ``model.parameters()``, every parameter
  counted once even when it is shared between modules. A layer record's ``params`` is
  the parameters that module owns directly and that no earlier record has claimed, so
  the records' sum is at most the total (less when a non-leaf module owns parameters,
  or a module is never called).

Published figures
-----------------
The "FLOPs" that HRank (and related CIFAR pruning papers) publish are
multiply-accumulates: HRank's counter (``get_flops.py``) adds, per image,
``C_in/groups * C_out * k_h * k_w * H_out * W_out`` for every conv and
``weight + bias`` elements for every linear layer, and counts as parameters the conv and
linear weights and biases only (BatchNorm excluded). So the papers' FLOPs correspond to
:attr:`Profile.macs`, not :attr:`Profile.flops`. With the models of
:mod:`pyprune.models` (10 classes):

=============  ====================  =========================  ===========================
model          ``params`` (all)      conv+linear params         ``macs``
=============  ====================  =========================  ===========================
vgg16_bn       14,987,722            14,978,250 (HRank 14.98M)  313,463,808 (HRank 313.73M)
resnet56       855,770               851,514 (HRank 0.85M)      125,747,840 (HRank 125.49M)
densenet40     1,059,298             1,040,578 (HRank 1.04M)    282,917,328 (HRank 282.00M)
=============  ====================  =========================  ===========================

The differences: the VGG convs here have no bias (HRank's have, +4,224 params) and
HRank's 313.73M is 0.09% above what its own counter gives for its model (313.46M);
resnet56 here uses 1x1-conv projection shortcuts (+262,144 MACs, +2,560 conv params);
DenseNet-40's published 282.00M is 0.3% below the 282.92M that HRank's counter gives
for the same layers. :meth:`Profile.params_of` sums the parameters of chosen layer types
(for example conv and linear only, HRank's parameter count).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

__all__ = ["LayerProfile", "Profile", "profile", "MAC_RULES"]


@dataclass(frozen=True)
class LayerProfile:
    """Counts for one leaf module (MACs and FLOPs per sample, summed over its calls)."""

    name: str
    type: str
    params: int
    macs: int
    flops: int
    output_shape: Optional[Tuple[int, ...]]
    calls: int = 1


@dataclass
class Profile:
    """Result of :func:`profile`: per-layer records and per-sample totals."""

    layers: List[LayerProfile]
    params: int
    macs: int
    flops: int
    batch_size: int = 1

    def params_of(self, *types: Union[str, Type[nn.Module]]) -> int:
        """Sum of ``params`` over records whose type is one of ``types``.

        ``types`` are class names (``"Conv2d"``) or module classes (matched by name).
        """
        names = {t if isinstance(t, str) else t.__name__ for t in types}
        return sum(layer.params for layer in self.layers if layer.type in names)

    def macs_of(self, *types: Union[str, Type[nn.Module]]) -> int:
        """Sum of ``macs`` over records whose type is one of ``types``."""
        names = {t if isinstance(t, str) else t.__name__ for t in types}
        return sum(layer.macs for layer in self.layers if layer.type in names)

    def __str__(self) -> str:
        header = ("layer", "type", "output shape", "params", "MACs")
        rows = [
            (
                layer.name or "(model)",
                layer.type,
                "-" if layer.output_shape is None else "x".join(str(d) for d in layer.output_shape),
                f"{layer.params:,}",
                f"{layer.macs:,}",
            )
            for layer in self.layers
        ]
        footer = ("total", "", "", f"{self.params:,}", f"{self.macs:,}")
        widths = [max(len(r[i]) for r in [header, footer, *rows]) for i in range(len(header))]

        def fmt(row: Sequence[str]) -> str:
            left = [row[i].ljust(widths[i]) for i in range(3)]
            right = [row[i].rjust(widths[i]) for i in range(3, 5)]
            return "  ".join(left + right).rstrip()

        rule = "-" * len(fmt(tuple("-" * w for w in widths)))
        lines = [fmt(header), rule, *(fmt(r) for r in rows), rule, fmt(footer),
                 f"params {self.params / 1e6:.2f}M, MACs {self.macs / 1e6:.2f}M, "
                 f"FLOPs (2 x MACs) {self.flops / 1e6:.2f}M per sample "
                 f"(measured with batch size {self.batch_size})"]
        return "\n".join(lines)


def _conv_macs(m: nn.modules.conv._ConvNd, inputs: Tuple[Any, ...], output: torch.Tensor) -> int:
    return output.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)


def _conv_transpose_macs(m: nn.modules.conv._ConvTransposeNd, inputs: Tuple[Any, ...],
                         output: torch.Tensor) -> int:
    return inputs[0].numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)


def _linear_macs(m: nn.Linear, inputs: Tuple[Any, ...], output: torch.Tensor) -> int:
    return output.numel() * m.in_features


#: MAC counting rule per module class (looked up along the class's MRO, so subclasses
#: inherit their base's rule). A rule gets ``(module, inputs, output)`` for one call and
#: returns the MACs of the whole batch. Types not found here count 0.
MAC_RULES: Dict[Type[nn.Module], Callable[..., int]] = {
    nn.Conv1d: _conv_macs,
    nn.Conv2d: _conv_macs,
    nn.Conv3d: _conv_macs,
    nn.ConvTranspose1d: _conv_transpose_macs,
    nn.ConvTranspose2d: _conv_transpose_macs,
    nn.ConvTranspose3d: _conv_transpose_macs,
    nn.Linear: _linear_macs,
}


def _rule_for(module: nn.Module) -> Optional[Callable[..., int]]:
    for cls in type(module).__mro__:
        rule = MAC_RULES.get(cls)
        if rule is not None:
            return rule
    return None


def _first_tensor(obj: Any) -> Optional[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


@dataclass
class _Acc:
    name: str
    module: nn.Module
    macs: int = 0
    calls: int = 0
    output_shape: Optional[Tuple[int, ...]] = None


def profile(model: nn.Module, example_inputs: Any) -> Profile:
    """Count parameters and per-sample MACs/FLOPs of ``model`` on ``example_inputs``.

    Args:
        model: any ``nn.Module``; it is run once in eval mode under ``torch.no_grad``,
            and each submodule's ``training`` flag is restored afterwards.
        example_inputs: a tensor (``model(x)``), a tuple or list (``model(*inputs)``)
            or a dict (``model(**inputs)``). The batch size is dimension 0 of the first
            tensor found in it.

    Returns:
        A :class:`Profile`: ``layers`` in order of first call, ``params`` (every
        parameter of ``model`` once), ``macs`` and ``flops`` (= 2 * macs) per sample.
        See the module docstring for the counting convention.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``example_inputs`` holds no tensor.
        ValueError: the first tensor of ``example_inputs`` has no batch dimension or
            a batch size of 0.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    first = _first_tensor(example_inputs)
    if first is None:
        raise TypeError("example_inputs must be a tensor or a tuple/list/dict holding one, "
                        f"got {type(example_inputs).__name__}")
    if first.dim() == 0:
        raise ValueError("example_inputs: the first tensor must have a batch dimension, "
                         "got a 0-d tensor")
    batch = int(first.shape[0])
    if batch == 0:
        raise ValueError(f"example_inputs: batch size must be positive, got shape {tuple(first.shape)}")

    accs: Dict[int, _Acc] = {}
    order: List[_Acc] = []

    def make_hook(acc: _Acc) -> Callable[..., None]:
        rule = _rule_for(acc.module)

        def hook(module: nn.Module, inputs: Tuple[Any, ...], output: Any) -> None:
            if acc.calls == 0:
                order.append(acc)
                out = _first_tensor(output)
                acc.output_shape = None if out is None else tuple(int(d) for d in out.shape)
            acc.calls += 1
            if rule is not None and isinstance(output, torch.Tensor):
                acc.macs += int(rule(module, inputs, output))

        return hook

    handles = []
    flags = [(m, m.training) for m in model.modules()]
    try:
        for name, module in model.named_modules():
            if next(module.children(), None) is not None or id(module) in accs:
                continue
            acc = _Acc(name=name, module=module)
            accs[id(module)] = acc
            handles.append(module.register_forward_hook(make_hook(acc)))
        model.eval()
        with torch.no_grad():
            if isinstance(example_inputs, dict):
                model(**example_inputs)
            elif isinstance(example_inputs, (tuple, list)):
                model(*example_inputs)
            else:
                model(example_inputs)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag

    seen: set = set()
    layers: List[LayerProfile] = []
    for acc in order:
        own = 0
        for p in acc.module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                own += p.numel()
        macs = _per_sample(acc.macs, batch)
        layers.append(LayerProfile(name=acc.name, type=type(acc.module).__name__, params=own,
                                   macs=macs, flops=2 * macs, output_shape=acc.output_shape,
                                   calls=acc.calls))
    params = sum(p.numel() for p in model.parameters())
    macs = sum(layer.macs for layer in layers)
    return Profile(layers=layers, params=params, macs=macs, flops=2 * macs, batch_size=batch)


def _per_sample(total: int, batch: int) -> int:
    q, r = divmod(total, batch)
    return q if r == 0 else int(round(total / batch))
