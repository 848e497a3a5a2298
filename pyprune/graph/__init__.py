"""Channel dependency graph: which channels of a model must be pruned together.

The graph is found by **tracing** the model on the example inputs, in one of two
ways (``build_graph(..., tracer=)``):

* **eager** (the default): one forward pass under a ``TorchFunctionMode`` records every
  torch function, tensor method and ``torch.nn`` layer call with its real shapes
  (convolutions and linear layers are not computed: shapes only);
* **torch.fx** symbolic tracing (``torch.fx.Tracer``) plus one shape-propagation run,
  used automatically when the forward pass branches on tensor values (``if x.sum() >
  0``), which an eager trace would see one side of; fx keeps such a submodule whole.

Both give the same node list (:class:`~pyprune.graph._core.Node`, the fields of an
``fx.Node``), and each op is interpreted by a handler from :data:`HANDLERS` (a dict
keyed by module class, function or ``"method:<name>"``).  Supported structures: conv -> BN -> activation chains, residual
adds (identity or 1x1-conv shortcuts), ``torch.cat`` along channels, depthwise convs,
grouped convs (every group loses the same local channels, so ``groups`` holds),
``ConvTranspose``, ``Linear`` after flatten or global pooling, Linear -> Linear,
channel-wise products (squeeze-and-excitation, layer-scale parameters), modules called
more than once, the functional forms custom layers call (``F.batch_norm`` /
``instance_norm`` / ``group_norm`` / ``layer_norm`` with the model's own parameters,
``torch.max_pool2d``, ``torch.relu_``...), GroupNorm (tied across its groups),
``chunk`` into equal pieces and channel-shuffle views (the pieces are tied), and
LayerNorm over channels-last features (ConvNeXt; needs a surgery that updates tuple
attributes, see :data:`~pyprune.graph.handlers.TUPLE_ATTRS`).

Anything the graph does not understand (a reshape that mixes channels, a custom op,
a split at fixed sizes, a submodule fx cannot trace, an op the eager trace cannot see
into such as a TorchScript module, which is kept whole) makes the channels it touches
unprunable, with a reason shown by :meth:`DependencyGraph.explain`: the graph never
produces a plan that would give a wrong model.  Every reason starts with the op that
caused it (``"torch.max_pool2d: ... (at node max_pool2d)"``);
:meth:`DependencyGraph.unprunable_ops` counts the groups kept whole per op.

Normalisations across channels (LayerNorm, GroupNorm with fewer groups than channels)
compute their statistics over the channels that are kept: pruning them changes the
other channels' values, as it does in any pruning library.

This package never imports criteria or surgery and never changes the model.
"""
from ._build import DependencyGraph, GraphError, Group, build_graph, reason_op
from ._core import AttrMember, ChannelInfo, TensorMember
from .handlers import HANDLERS, Context

__all__ = ["build_graph", "DependencyGraph", "Group", "GraphError", "reason_op", "TensorMember",
           "AttrMember", "ChannelInfo", "HANDLERS", "Context"]
