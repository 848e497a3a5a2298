"""The groups the graph finds for each structure, and the reasons it refuses some."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pyprune.graph import HANDLERS, GraphError, build_graph
from pyprune.plan import make_plan
from pyprune.criteria.random import random_scores
from pyprune.surgery import apply_plan

from pyprune_zoo import ZOO, Between, cbr, make


def _group(g, producer):
    gs = g.groups_of(producer)
    assert len(gs) == 1, gs
    return gs[0]


def _member(g, name, dim):
    ms = [m for m in g.tensor_members if m.name == name and m.dim == dim]
    assert len(ms) == 1, (name, dim)
    return ms[0]


def test_chain_flatten_linear_gets_block_hw():
    model, x = make("chain_flatten")
    g = build_graph(model, x)
    fc_in = _member(g, "fc.weight", 1)
    assert fc_in.block == 4  # C x 2 x 2 map flattened
    assert _group(g, "features.2.0").id == _group(g, "features.2.0").id
    assert torch.equal(g.member_index(fc_in), g.out_index("features.2.0"))
    out = _group(g, "fc")
    assert not out.prunable and "model output" in out.reasons


def test_explain_and_groups_of_channel_preserving_layers():
    model, x = make("residual")
    g = build_graph(model, x)
    assert g.groups_of("b1.2") == g.groups_of("stem.0")  # a BatchNorm's channels
    assert g.groups_of(model.b1[2]) == g.groups_of("stem.0")
    assert g.groups_of("pool") == []
    short = g.explain("stem.0")
    full = g.explain("stem.0", verbose=True)
    assert "(1 more)" in short and "more)" not in full
    assert "down.0.weight[dim 1]" in full and "down.0.weight[dim 1]" not in short


def test_residual_couples_shortcuts():
    model, x = make("residual")
    g = build_graph(model, x)
    assert _group(g, "stem.0") is _group(g, "b1.1")  # identity shortcut
    grp = _group(g, "down.0")  # 1x1 downsample shortcut
    assert set(grp.producers) == {"b2.1", "down.0", "b3.1"}
    assert grp.prunable
    assert _group(g, "b1.0.0") is not _group(g, "stem.0")


def test_cat_offsets():
    model, x = make("dense_cat")
    g = build_graph(model, x)
    idx = g.member_index(_member(g, "l2.0.weight", 1))
    assert torch.equal(idx, torch.cat([g.out_index("stem.0"), g.out_index("l1.0")]))
    head = g.member_index(_member(g, "proj.weight", 1))
    assert torch.equal(head, torch.cat([g.out_index("stem.0"), g.out_index("l1.0"),
                                        g.out_index("l2.0")]))
    # proj's output is added to the concatenation: coupled with all three producers
    assert torch.equal(g.out_index("proj"), head)


def test_cat_without_add_keeps_producers_apart():
    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = cbr(3, 4), cbr(4, 5), cbr(9, 6)
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            x = self.a(x)
            x = self.c(torch.cat([x, self.b(x)], 1))
            return self.fc(x.mean([2, 3]))

    g = build_graph(Dense(), torch.randn(1, 3, 8, 8))
    ga, gb = _group(g, "a.0"), _group(g, "b.0")
    assert ga is not gb and ga.prunable and gb.prunable
    c_in = g.member_index(_member(g, "c.0.weight", 1))
    assert c_in[:4].tolist() == list(range(ga.offset, ga.offset + 4))
    assert c_in[4:].tolist() == list(range(gb.offset, gb.offset + 5))


def test_depthwise_ties_input_and_output():
    model, x = make("depthwise")
    g = build_graph(model, x)
    assert _group(g, "dw.0") is _group(g, "expand.0")
    attrs = {(a.module, a.attr) for a in g.attr_members}
    assert {("dw.0", "groups"), ("dw.0", "in_channels"), ("dw.0", "out_channels")} <= attrs
    # multiplier-2 depthwise conv: each input channel owns two output channels
    assert _group(g, "dw2.0") is _group(g, "stem.0")
    assert _member(g, "dw2.0.weight", 0).block == 2
    assert _member(g, "fc.weight", 1).block == 2


def _positions_per_group(g, producer, groups):
    """For each channel of ``producer``'s group: how many of its output positions fall in
    each conv group (must be the same for all conv groups)."""
    idx = g.out_index(producer)
    n = idx.numel() // groups
    return [[int((idx[q * n:(q + 1) * n] == c).sum()) for q in range(groups)]
            for c in torch.unique(idx).tolist()]


def test_grouped_conv_ties_the_same_local_channel_of_every_group():
    model, x = make("grouped")
    g = build_graph(model, x)
    for name in ("a.0", "g.0"):
        grp = _group(g, name)
        assert grp.prunable
        assert grp.size == 4  # 8 channels, 2 groups: channel j and 4 + j go together
        idx = g.out_index(name)
        assert torch.equal(idx[:4], idx[4:])
    w_in = _member(g, "g.0.weight", 1)
    assert len(w_in.elems) == 4 and torch.equal(g.member_index(w_in), g.out_index("a.0")[:4])
    assert _group(g, "b.0").prunable and _group(g, "b.0") is not _group(g, "g.0")


def test_grouped_chain_keeps_every_group_equal():
    model, x = make("grouped_chain")
    g = build_graph(model, x)
    for name, groups in (("b1.1.0", 4), ("g2.0", 2), ("g3.0", 3), ("t.0", 4), ("g4.0", 2)):
        assert _group(g, name).prunable, g.explain(name)
        for counts in _positions_per_group(g, name, groups):
            assert len(set(counts)) == 1, (name, counts)
    # g2's 12 outputs (2 groups: j ~ j + 6) feed g3 (3 groups: j ~ j + 4 ~ j + 8): the
    # ties combine into the even and the odd channels
    assert _group(g, "g2.0").size == 2
    assert torch.equal(g.out_index("g2.0") % 2, torch.arange(12) % 2) or torch.equal(
        g.out_index("g2.0") % 2, 1 - torch.arange(12) % 2)
    # g3's outputs (3 groups) feed t (4 groups): one class of 12, nothing to remove
    assert _group(g, "g3.0").size == 1
    # the concatenation feeding g4 (2 groups) ties t's channels to c's
    assert _group(g, "t.0") is _group(g, "c.0")


def test_squeeze_excite_couples_gate_with_features():
    model, x = make("squeeze_excite")
    g = build_graph(model, x)
    assert _group(g, "fc2") is _group(g, "a.0")
    assert _group(g, "se_c2") is _group(g, "b.0")
    assert _member(g, "gamma", 1).role == "out"
    assert _group(g, "fc1").prunable and _group(g, "se_c1").prunable


def test_module_called_twice():
    model, x = make("reused")
    g = build_graph(model, x)
    assert _group(g, "shared") is _group(g, "stem.0")
    assert _member(g, "bn.weight", 0).modules == ["bn"]


def test_conv_transpose_layout():
    model, x = make("transposed")
    g = build_graph(model, x)
    assert _member(g, "up.weight", 0).role == "in"
    assert _member(g, "up.weight", 1).role == "out"
    assert _group(g, "dwt") is _group(g, "up")


def test_linear_chain():
    model, x = make("mlp")
    g = build_graph(model, x)
    assert _member(g, "net.4.weight", 1).block == 1
    assert _group(g, "net.0").prunable and _group(g, "net.4").prunable
    assert torch.equal(g.member_index(_member(g, "net.1.weight", 0)), g.out_index("net.0"))


def test_linear_on_channels_last_via_permute():
    class CL(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = cbr(3, 6)
            self.mix = nn.Linear(6, 5)
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            x = self.mix(self.a(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return self.fc(F.relu(x).mean([2, 3]))

    model = CL().eval()
    x = torch.randn(2, 3, 4, 4)
    g = build_graph(model, x)
    assert _group(g, "a.0").prunable and _group(g, "mix").prunable
    assert torch.equal(g.member_index(_member(g, "mix.weight", 1)), g.out_index("a.0"))
    apply_plan(model, make_plan(g, random_scores(model, seed=0), ratio=0.5))
    assert model(x).shape == (2, 2)
    assert model.mix.in_features == 3 and model.mix.out_features == 3


@pytest.mark.parametrize("name, reason", [
    ("mixing_view", "Tensor.reshape: mixes channels"),
    ("custom_op", ": not understood by the graph (at node"),
    ("untraceable", "could not be traced by torch.fx"),
    ("hard_coded_view", "hard-codes the channel count"),
])
def test_refused_structures_are_unprunable_with_reason(name, reason):
    model, x = make(name)
    g = build_graph(model, x)
    bad = [grp for grp in g.groups if any(reason in r for r in grp.reasons)]
    assert bad and all(not grp.prunable for grp in bad)
    assert reason in g.explain()
    before = {n: p.shape for n, p in model.state_dict().items()}
    apply_plan(model, make_plan(g, random_scores(model, seed=0), ratio=0.5))
    after = {n: p.shape for n, p in model.state_dict().items()}
    assert before != after  # the rest of the model is still pruned
    assert model(x).shape[0] == x.shape[0]
    for grp in bad:
        for m in grp.members:
            assert after[m.name][m.dim] == before[m.name][m.dim]


def test_split_along_channels_is_refused():
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = cbr(3, 8)
            self.b, self.c = cbr(4, 4), cbr(4, 4)

        def forward(self, x):
            u, v = torch.split(self.a(x), 4, dim=1)
            return torch.cat([self.b(u), self.c(v)], 1)

    g = build_graph(Split(), torch.randn(1, 3, 4, 4))
    assert not _group(g, "a.0").prunable
    assert "splits channels at fixed sizes" in g.explain("a.0")


def test_ghost_slice_to_full_width_is_pruned_and_a_narrowing_slice_is_kept():
    model, x = make("ghost")
    g = build_graph(model, x)
    # [:, :12] of 12 channels and [:, :8] of 8 are the identity: those modules prune
    assert _group(g, "g1.primary.0").prunable, g.explain("g1.primary.0")
    assert _group(g, "stem.0").prunable, g.explain("stem.0")
    # [:, :5] of 6 selects channels (a hard-coded 5): kept whole, with the op named
    assert not _group(g, "odd.primary.0").prunable
    assert "selects channels" in g.explain("odd.primary.0")
    before = model(x)
    apply_plan(model, make_plan(g, random_scores(model, seed=0), ratio=0.5))
    assert model.g1.primary[0].out_channels == 3 and model.g1.cheap[0].out_channels == 3
    assert model.odd.primary[0].out_channels == 3
    assert model(x).shape == before.shape


def test_untraceable_root_raises_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            if x.sum() > 0:
                return self.c(x)
            return x

    with pytest.raises(GraphError, match="torch.fx symbolic tracing"):
        build_graph(Bad(), torch.randn(1, 3, 8, 8))


def test_leaf_modules_option_keeps_a_submodule_whole():
    model, x = make("residual")
    g = build_graph(model, x, leaf_modules=["b1"])
    assert not _group(g, "stem.0").prunable
    assert "nn.Sequential: not understood by the graph (at module b1)" in g.explain("stem.0")


def test_build_graph_leaves_model_unchanged():
    model, x = make("residual")
    model.train()
    model.b1.eval()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    build_graph(model, x)
    assert model.training and not model.b1.training and model.b2.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


@pytest.mark.parametrize("tracer", ["auto", "fx"])  # auto: eager but for "untraceable"
@pytest.mark.parametrize("name", sorted(ZOO))
def test_fake_and_real_shape_propagation_agree(name, tracer):
    model, x = make(name)

    def summary(g):
        return [(grp.size, grp.producers, grp.reasons, [(m.name, m.dim, m.block) for m in grp.members])
                for grp in g.groups]

    assert summary(build_graph(model, x, shapes="fake", tracer=tracer)) == \
        summary(build_graph(model, x, shapes="real", tracer=tracer))


def test_build_graph_argument_errors():
    with pytest.raises(TypeError, match="nn.Module"):
        build_graph("model", torch.randn(1))
    model, x = make("mlp")
    with pytest.raises(TypeError, match="example_inputs"):
        build_graph(model, {"x": x})
    with pytest.raises(GraphError, match="example_inputs failed"):
        build_graph(model, torch.randn(4, 7))
    with pytest.raises(ValueError, match="shapes"):
        build_graph(model, x, shapes="meta")


def test_handler_registry_is_a_dict_that_can_be_extended():
    assert HANDLERS[nn.Conv2d] is HANDLERS[nn.Conv1d]
    assert "method:view" in HANDLERS and torch.cat in HANDLERS

    class Scale(nn.Module):  # a torch.nn-like leaf: unknown until registered
        def forward(self, x):
            return x * 2

    Scale.__module__ = "torch.nn.custom"

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.s, self.b = cbr(3, 4), Scale(), cbr(4, 2)

        def forward(self, x):
            return self.b(self.s(self.a(x)))

    net, x = Net(), torch.randn(1, 3, 4, 4)
    assert not _group(build_graph(net, x), "a.0").prunable
    HANDLERS[Scale] = HANDLERS[nn.ReLU]
    try:
        assert _group(build_graph(net, x), "a.0").prunable
    finally:
        del HANDLERS[Scale]


def test_reference_model_groups():
    models = pytest.importorskip("pyprune.models")
    g = build_graph(models.get_model("resnet20"), torch.randn(1, 3, 32, 32))
    stages = [grp for grp in g.groups if len(grp.producers) > 1]
    assert len(stages) == 3  # one residual stream per stage
    assert sum(len(s.producers) for s in stages) == 1 + 3 + 4 + 4  # stem, convs, shortcuts
    assert len(g.prunable_groups) == len(g.groups) - 1  # all but the classifier


def test_spatial_attention_broadcast_and_elementwise_max():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.att, self.b = cbr(3, 6), nn.Conv2d(6, 1, 1), cbr(6, 6)
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            x = self.a(x)
            x = x * torch.sigmoid(self.att(x))  # (N, 1, H, W) broadcast over channels
            x = torch.max(x, self.b(x))  # elementwise max couples a and b
            return self.fc(x.mean([2, 3]))

    model = Attn().eval()
    x = torch.randn(1, 3, 4, 4)
    g = build_graph(model, x)
    assert _group(g, "a.0") is _group(g, "b.0") and _group(g, "a.0").prunable
    assert not _group(g, "att").prunable
    apply_plan(model, make_plan(g, random_scores(model, seed=0), ratio=0.5))
    assert model(x).shape == (1, 2) and model.a[0].out_channels == 3


def test_a_failing_handler_keeps_channels_whole(monkeypatch):
    def boom(ctx, node, target):
        raise RuntimeError("handler bug")

    monkeypatch.setitem(HANDLERS, torch.cat, boom)
    g = build_graph(*make("dense_cat"))
    assert not _group(g, "l1.0").prunable
    assert "handler bug" in g.explain("l1.0")


@pytest.mark.parametrize("tracer", ["eager", "fx"])  # fx stores constants on the root
def test_tensor_constants_do_not_stick_to_the_model(tracer):
    model = Between(lambda y: y * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1),
                    mid=4, out=2).eval()
    keys = set(model.__dict__)
    g = build_graph(model, torch.randn(1, 3, 4, 4), tracer=tracer)
    assert g.tracer == tracer
    assert set(model.__dict__) == keys
    assert not _group(g, "a.0").prunable  # the constant has a fixed channel count
    assert _group(g, "b.0").reasons == ["model output"]


def test_module_dict_is_named_modules_in_order():
    from pyprune.graph._core import module_dict
    from pyprune.models import densenet40, mobilenetv2, resnet20

    shared = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
    nested = nn.Sequential(shared, nn.Sequential(shared, nn.Identity()), shared[0])
    nested.add_module("none", None)
    models = [make(n)[0] for n in ZOO] + [resnet20(), densenet40(), mobilenetv2(), nested]
    for m in models:
        expect = list(m.named_modules(remove_duplicate=False))
        got = list(module_dict(m).items())
        assert [k for k, _ in got] == [k for k, _ in expect]
        assert all(a is b for (_, a), (_, b) in zip(got, expect))


def test_functional_batch_norm_parameters_are_pruned_with_their_channels():
    model, x = make("functional")
    g = build_graph(model, x)
    assert _group(g, "a").prunable and _group(g, "b").prunable, g.explain()
    for name in ("bn_a.weight", "bn_a.bias", "bn_a.running_mean", "bn_a.running_var"):
        m = _member(g, name, 0)
        assert m.role == "out" and torch.equal(g.member_index(m), g.out_index("a"))
    apply_plan(model, make_plan(g, random_scores(model, seed=0), ratio=0.5))
    assert model.bn_a.weight.shape == (4,) and model.bn_a.num_features == 4
    assert model.bn_b.running_var.shape == (4,) and model(x).shape == (2, 3)


def test_functional_batch_norm_with_a_computed_weight_is_kept_whole():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), cbr(4, 2)
            self.w = nn.Parameter(torch.ones(4))
            self.register_buffer("m", torch.zeros(4))
            self.register_buffer("v", torch.ones(4))

        def forward(self, x):
            return self.b(F.batch_norm(self.a(x), self.m, self.v, self.w * 2))

    g = build_graph(Scaled().eval(), torch.randn(1, 3, 6, 6))
    grp = _group(g, "a")
    assert not grp.prunable
    assert any(r.startswith("torch.nn.functional.batch_norm: its weight is not a per-channel")
               for r in grp.reasons), grp.reasons


def test_group_norm_ties_channels_across_its_groups():
    class GN(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.gn, self.b = nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), cbr(8, 2)

        def forward(self, x):
            return self.b(self.gn(self.a(x)))

    model, x = GN().eval(), torch.randn(1, 3, 6, 6)
    g = build_graph(model, x)
    grp = _group(g, "a")
    assert grp.prunable and grp.size == 4
    assert torch.equal(g.out_index("a")[:4], g.out_index("a")[4:])
    apply_plan(model, make_plan(g, random_scores(model, seed=0), ratio=0.5))
    assert model.gn.num_groups == 2 and model.gn.num_channels == 4
    assert model.gn.weight.shape == (4,) and model(x).shape == (1, 2, 4, 4)


def test_shufflenet_units_prune_and_keep_the_halves_equal():
    model, x = make("shuffle_blocks")
    g = build_graph(model, x)
    assert _group(g, "b1.2.0").prunable and _group(g, "b3.3.0").prunable, g.explain()
    before = model(x)
    apply_plan(model, make_plan(g, random_scores(model, seed=0), ratio=0.5))
    assert model.b1[2][0].out_channels == model.b2[3][0].out_channels
    assert model.head[0].in_channels == 2 * model.b3[3][0].out_channels
    assert model(x).shape == before.shape


def test_chunk_ties_pieces_and_split_by_size_is_refused():
    model = Between(lambda t: torch.cat(t.chunk(2, dim=1)[::-1], 1))
    g = build_graph(model, torch.randn(1, 3, 4, 4))
    grp = _group(g, "a.0")
    assert grp.prunable and grp.size == 4
    model = Between(lambda t: torch.cat(torch.split(t, 4, dim=1)[::-1], 1))
    g = build_graph(model, torch.randn(1, 3, 4, 4))
    assert not _group(g, "a.0").prunable
    assert "torch.split: splits channels at fixed sizes" in g.explain("a.0")


def test_every_reason_starts_with_the_op():
    for name in ("mixing_view", "custom_op", "hard_coded_view", "untraceable"):
        model, x = make(name)
        g = build_graph(model, x)
        for grp in g.groups:
            for r in grp.reasons:
                if r == "model output":
                    continue
                op = r.split(": ", 1)[0]
                assert op and " (at " in r, r
                assert op.startswith(("torch.", "Tensor.", "nn.", "operator.", "fx")) or \
                    "." in op, r


JIT_DEPRECATED = "ignore:`torch.jit.trace.*` is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_torchscript_model_is_refused_and_a_scripted_submodule_is_named():
    model, x = make("residual")
    traced = torch.jit.trace(model, (x,))
    with pytest.raises(TypeError, match="TorchScript module.*Pass the original nn.Module"):
        build_graph(traced, x)
    with torch.no_grad():
        model.b1 = torch.jit.trace(model.b1, (model.stem(x),))
    g = build_graph(model, x)
    ops = g.unprunable_ops()
    assert any(op.startswith("TorchScript module") for op in ops), ops
    assert "the graph cannot see inside TorchScript" in g.explain("stem.0")


def test_unprunable_ops_counts_groups_per_op():
    class Pools(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = cbr(3, 4), cbr(4, 4), cbr(4, 2)

        def forward(self, x):
            x = torch.nn.functional.lp_pool2d(self.a(x), 2, 2)
            return self.c(torch.special.erf(self.b(x)))

    g = build_graph(Pools().eval(), torch.randn(1, 3, 8, 8))
    ops = g.unprunable_ops()
    assert ops == {"torch.special.special_erf": {"groups": 1, "channels": 4}} or \
        list(ops.values()) == [{"groups": 1, "channels": 4}], ops
    assert not _group(g, "b.0").prunable and _group(g, "a.0").prunable


class _ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise conv, permute to channels-last, LayerNorm(C), Linear on the
    last dim, a layer-scale parameter, permute back, residual add; then a LayerNorm2d-style
    F.layer_norm with the module's own normalized_shape."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 1)
        self.dw = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        self.ln = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.gamma = nn.Parameter(torch.full((c, 1, 1), 0.5))
        self.ln2 = nn.LayerNorm(c)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.ln(y)))).permute(0, 3, 1, 2)
        x = x + self.gamma * y
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.ln2.normalized_shape, self.ln2.weight,
                         self.ln2.bias).permute(0, 3, 1, 2)
        return self.head(x.mean([2, 3]))


def test_layer_norm_over_channels_waits_for_tuple_attributes(monkeypatch):
    import pyprune.graph.handlers as H

    model, x = _ConvNeXtBlock().eval(), torch.randn(1, 3, 4, 4)
    monkeypatch.setattr(H, "TUPLE_ATTRS", False)
    g = build_graph(model, x)
    assert not _group(g, "stem").prunable and _group(g, "fc1").prunable
    assert "nn.LayerNorm: normalized_shape is a tuple attribute" in g.explain("stem")
    monkeypatch.setattr(H, "TUPLE_ATTRS", True)
    g = build_graph(model, x)
    grp = _group(g, "stem")
    assert grp.prunable, g.explain("stem")
    assert {"ln.weight", "ln.bias", "gamma", "ln2.weight", "dw.weight"} <= {
        m.name for m in grp.members}
    assert _member(g, "gamma", 0).role == "out"
    attrs = {(a.module, a.attr): a for a in g.attr_members}
    assert attrs[("ln", "normalized_shape")].index == 0
    assert attrs[("ln2", "normalized_shape")].index == 0
    assert torch.equal(g.member_index(_member(g, "fc1.weight", 1)), g.out_index("stem"))


def test_layer_norm_over_more_than_the_channels_is_kept_whole(monkeypatch):
    import pyprune.graph.handlers as H

    monkeypatch.setattr(H, "TUPLE_ATTRS", True)
    model = Between(nn.LayerNorm([8, 8]))  # over (W, ...) of an NCHW map: channels alone
    g = build_graph(model.eval(), torch.randn(1, 3, 8, 8))
    assert _group(g, "a.0").prunable
    model = Between(lambda t: F.layer_norm(t, t.shape[1:]))  # over C, H, W: mixes
    g = build_graph(model.eval(), torch.randn(1, 3, 8, 8))
    assert not _group(g, "a.0").prunable
    assert "torch.nn.functional.layer_norm: normalises the channels together" in g.explain("a.0")


class _FLinear(nn.Linear):
    """timm's ``Linear``: an nn.Linear whose forward calls F.linear."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class _FLinearNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.fc1 = _FLinear(8 * 2 * 2, 12)
        self.fc2 = _FLinear(12, 3)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.a(x), 2).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def test_functional_linear_prunes_inputs_and_outputs_like_nn_linear():
    torch.manual_seed(0)
    model = _FLinearNet().eval()
    x = torch.randn(2, 3, 8, 8)
    g = build_graph(model, x)
    assert _group(g, "a.0").prunable, g.explain("a.0")
    assert _group(g, "fc1").prunable, g.explain("fc1")
    assert not g.unprunable_ops(), g.unprunable_ops()
    before = model(x)
    apply_plan(model, make_plan(g, random_scores(model, seed=0), ratio=0.5))
    assert model.a[0].out_channels == 4 and model.fc1.in_features == 16
    assert model.fc1.out_features == 6 == model.fc2.in_features
    assert tuple(model.fc1.weight.shape) == (6, 16)
    assert model(x).shape == before.shape


def test_functional_linear_with_a_foreign_weight_keeps_its_outputs():
    class Foreign(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = cbr(3, 8)
            self.w = nn.Parameter(torch.randn(5, 8))
            self.head = nn.Linear(5, 3)

        def forward(self, x):
            return self.head(F.linear(self.a(x).mean([2, 3]), self.w))

    g = build_graph(Foreign(), torch.randn(2, 3, 8, 8))
    assert _group(g, "a.0").prunable, g.explain("a.0")  # its input side prunes
    frozen = [grp for grp in g.groups if not grp.prunable and grp.size == 5]
    assert frozen and "not the weight of an nn.Linear module" in " ".join(frozen[0].reasons)
