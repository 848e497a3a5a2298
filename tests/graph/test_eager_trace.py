"""The eager tracer: same graphs as torch.fx, shape formulas equal to the real ops,
fallback to fx on data-dependent control flow, the model left exactly as it was."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, strategies as st

from pyprune.graph import GraphError, build_graph
from pyprune.graph._eager import SizeInt, _MODULE_SKIP, _SKIP
from pyprune.plan import make_plan
from pyprune.criteria.random import random_scores
from pyprune.surgery import apply_plan

from pyprune_zoo import ZOO, Between, cbr, make


def summary(g):
    """Everything about the groups but the reasons' wording (node names differ)."""
    return [(grp.size, grp.producers, grp.prunable,
             [(m.name, m.dim, m.block, m.role) for m in grp.members])
            for grp in g.groups]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_eager_and_fx_find_the_same_groups(name):
    model, x = make(name)
    eager = build_graph(model, x)
    fx = build_graph(model, x, tracer="fx")
    assert eager.tracer == ("fx" if name == "untraceable" else "eager")
    assert fx.tracer == "fx"
    assert summary(eager) == summary(fx)
    assert torch.equal(eager.channel_group, fx.channel_group)
    # shapes="auto" (convs not computed) and "real" give the same graph
    assert summary(build_graph(model, x, shapes="real")) == summary(eager)


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet20", "densenet40", "mobilenetv2"])
def test_eager_and_fx_agree_on_reference_models(name):
    models = pytest.importorskip("pyprune.models")
    model, x = models.get_model(name), torch.randn(1, 3, 32, 32)
    eager, fx = build_graph(model, x), build_graph(model, x, tracer="fx")
    assert eager.tracer == "eager"
    assert summary(eager) == summary(fx)
    assert summary(build_graph(model, x, shapes="real")) == summary(eager)
    assert summary(build_graph(model, x, shapes="fake")) == summary(eager)


def test_data_dependent_control_flow_falls_back_to_fx():
    model, x = make("untraceable")
    g = build_graph(model, x)
    assert g.tracer == "fx" and "Tensor.__bool__" in g.why_fx
    assert "traced with torch.fx" in g.explain()
    with pytest.raises(GraphError, match="cannot be traced eagerly.*tensor values"):
        build_graph(model, x, tracer="eager")
    with pytest.raises(ValueError, match="tracer must be"):
        build_graph(model, x, tracer="jit")


def test_item_in_forward_falls_back_to_fx():
    class Gate(nn.Module):
        def forward(self, y):
            return y * float(y.abs().max().item() > 0)

    class Scaled(nn.Module):
        def __init__(self, gate_inline):
            super().__init__()
            self.a, self.gate, self.b = cbr(3, 4), Gate(), cbr(4, 2)
            self.gate_inline = gate_inline

        def forward(self, x):
            y = self.a(x)
            if self.gate_inline:
                y = y * float(y.abs().max().item() > 0)
            else:
                y = self.gate(y)
            return self.b(y)

    x = torch.randn(1, 3, 4, 4)
    g = build_graph(Scaled(False).eval(), x)
    assert g.tracer == "fx" and "Tensor.item()" in g.why_fx
    assert not g.groups_of("a.0")[0].prunable  # fx keeps the gate whole
    with pytest.raises(GraphError, match=r"cannot be traced eagerly \(.*Tensor.item\(\)"):
        build_graph(Scaled(True).eval(), x)


def test_sizes_read_from_tensors_are_not_hard_coded_channel_counts():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc1, self.fc2, self.b = cbr(3, 8), nn.Linear(8, 2), nn.Linear(2, 8), cbr(8, 4)

        def forward(self, x):
            y = self.a(x)
            n, c = y.size(0), y.shape[1]
            w = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3)).view(n, c)))))
            return self.b(y * w.view(n, c, 1, 1).expand(n, c, y.size(2), y.size(3)))

    model, x = SE().eval(), torch.randn(2, 3, 4, 4)
    g = build_graph(model, x)
    assert g.tracer == "eager"
    assert summary(g) == summary(build_graph(model, x, tracer="fx"))
    grp = g.groups_of("a.0")[0]
    assert grp.prunable, g.explain("a.0")
    # a literal is still a hard-coded count
    model, x = make("hard_coded_view")
    assert "hard-codes the channel count 8" in build_graph(model, x).explain("b.0")


def test_size_int_keeps_its_mark_through_arithmetic():
    c = SizeInt(8)
    for v in (c // 2, c * 2, 2 * c, c + 1, 1 + c, c - 1, 9 - c, c % 3, -c):
        assert type(v) is SizeInt
    assert type(c / 2) is float and c // 2 == 4


def test_in_place_write_into_channels_freezes_them():
    def write(y):
        y[:, :2] = 0  # __setitem__: no handler, its channels must stay
        return y

    model, x = Between(write, mid=6).eval(), torch.randn(1, 3, 4, 4)
    g = build_graph(model, x)
    assert g.tracer == "eager"
    assert not g.groups_of("a.0")[0].prunable
    assert "setitem" in g.explain("a.0")


def test_data_dependent_shapes_are_traced_with_values():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = cbr(3, 6), cbr(6, 4)

        def forward(self, x):
            y = self.b(self.a(x))
            return y, y[y > 0.5]  # boolean mask: its shape depends on the values

    model, x = Masked().eval(), torch.randn(1, 3, 4, 4)
    g = build_graph(model, x)
    real = build_graph(model, x, shapes="real")
    assert g.tracer == "eager" and summary(g) == summary(real)
    masked = [n for n in g.nodes if n.name.startswith("getitem")][-1]
    assert masked.meta["tensor_meta"].shape == real.nodes[-2].meta["tensor_meta"].shape


def test_module_called_with_keywords_and_functional_conv():
    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 6, 3, padding=1)
            self.w = nn.Parameter(torch.randn(4, 6, 1, 1))
            self.b = cbr(6, 4)

        def forward(self, x):
            y = self.a(input=x)
            return self.b(y) + F.conv2d(y, self.w)  # a parameter read directly

    model, x = KW().eval(), torch.randn(1, 3, 4, 4)
    g = build_graph(model, x)
    assert g.tracer == "eager"
    assert summary(g) == summary(build_graph(model, x, tracer="fx"))
    assert not g.groups_of("a")[0].prunable
    assert "torch.conv2d: not understood by the graph (at node conv2d" in g.explain("a")


def test_model_is_left_exactly_as_it_was():
    model, x = make("residual")
    model.train()
    model.b1.eval()
    own = model.b2.forward
    model.b2.__dict__["forward"] = own  # an instance-level forward stays
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    before = {n: dict(m.__dict__) for n, m in model.named_modules()}
    build_graph(model, x)
    assert model.training and not model.b1.training and model.b2.training
    assert model.b2.__dict__["forward"] is own
    for n, m in model.named_modules():
        assert set(m.__dict__) == set(before[n]), n
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = cbr(3, 4)

        def forward(self, x):
            return self.a(x).view(7, -1)

    boom = Boom().train()
    with pytest.raises(GraphError, match="example_inputs failed"):
        build_graph(boom, torch.randn(1, 3, 4, 4))
    assert boom.training and all("forward" not in m.__dict__ for m in boom.modules())


def test_pruning_an_eager_graph_gives_a_working_model():
    model, x = make("dense_cat")
    g = build_graph(model, x)
    assert g.tracer == "eager"
    apply_plan(model, make_plan(g, random_scores(model, seed=1), ratio=0.5))
    assert model(x).shape[0] == x.shape[0]


# -- the shapes of skipped ops equal the real ops' --------------------------------------

def _check_skip(func, *args, **kwargs):
    real = func(*args, **kwargs)
    fast = _SKIP[func](args, kwargs)
    assert fast is not None, (func, [getattr(a, "shape", a) for a in args], kwargs)
    assert fast.shape == real.shape and fast.dtype == real.dtype


@given(nd=st.integers(1, 3), batched=st.booleans(), groups=st.sampled_from([1, 2]),
       k=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 2), d=st.integers(1, 2),
       size=st.integers(5, 9), transposed=st.booleans(), op=st.integers(0, 2),
       bias=st.booleans())
def test_conv_shape_formula_matches_torch(nd, batched, groups, k, s, p, d, size, transposed,
                                          op, bias):
    cin, cout = 2 * groups, 3 * groups
    x = torch.randn(*(((2,) if batched else ()) + (cin,) + (size,) * nd))
    if transposed:
        op = op % max(s, d)  # torch requires output_padding < max(stride, dilation)
        w = torch.randn(cin, cout // groups, *(k,) * nd)
        b = torch.randn(cout) if bias else None
        _check_skip(getattr(torch, f"conv_transpose{nd}d"), x, w, b, s, p, op, groups, d)
        layer = getattr(nn, f"ConvTranspose{nd}d")(cin, cout, k, s, p, op, groups, bias, d)
    else:
        w = torch.randn(cout, cin // groups, *(k,) * nd)
        b = torch.randn(cout) if bias else None
        if size + 2 * p - d * (k - 1) < 1:
            return
        _check_skip(getattr(torch, f"conv{nd}d"), x, w, b, s, p, d, groups)
        if s == 1:
            with warnings.catch_warnings():  # 'same' with an even kernel warns once
                warnings.simplefilter("ignore", UserWarning)
                _check_skip(getattr(torch, f"conv{nd}d"), x, w, b, 1, "same", d, groups)
        if size - d * (k - 1) >= 1:
            _check_skip(getattr(torch, f"conv{nd}d"), x, w, b, s, "valid", d, groups)
        layer = getattr(nn, f"Conv{nd}d")(cin, cout, k, s, p, d, groups, bias)
    # the layer path (the planner of the torch.nn class, empty results)
    fast = _MODULE_SKIP[type(layer)](layer)(x)
    assert fast is not None and fast.shape == layer(x).shape and fast.dtype == x.dtype


def test_skipped_ops_refuse_what_the_formulas_do_not_cover():
    x = torch.randn(1, 4, 6, 6)
    assert _SKIP[torch.conv2d]((x, torch.randn(2, 3, 3, 3)), {}) is None  # channel mismatch
    assert _SKIP[torch.conv2d]((x, torch.randn(2, 4, 7, 7)), {}) is None  # empty output
    assert _SKIP[torch.conv2d]((x.double(), torch.randn(2, 4, 1, 1)), {}) is None
    assert _SKIP[torch.conv2d]((x, torch.randn(2, 4, 1, 1)), {"stride": 2, "padding": "same"}) is None
    assert _SKIP[F.linear]((torch.randn(3, 5), torch.randn(2, 4)), {}) is None
    _check_skip(F.linear, torch.randn(3, 7, 5), torch.randn(2, 5), torch.randn(2))
    _check_skip(F.linear, torch.randn(5), torch.randn(2, 5))
    bn = nn.BatchNorm2d(4).eval()
    args = (x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.1, 1e-5)
    _check_skip(F.batch_norm, *args)
    assert _SKIP[F.batch_norm](args[:5] + (True,), {}) is None  # training: real statistics
    assert _SKIP[F.batch_norm]((torch.randn(1, 3, 2, 2),) + args[1:], {}) is None


def test_auto_shapes_do_not_compute_convolutions(monkeypatch):
    from pyprune.graph import _eager

    runs, fast_calls = [], []
    real_forward = nn.Conv2d._conv_forward
    monkeypatch.setattr(nn.Conv2d, "_conv_forward",
                        lambda self, *a: runs.append(1) or real_forward(self, *a))
    fast = _eager._SKIP[torch.conv2d]
    monkeypatch.setitem(_eager._SKIP, torch.conv2d,
                        lambda a, k: fast_calls.append(1) or fast(a, k))

    class Mixed(nn.Module):  # a Conv2d module and a functional conv
        def __init__(self):
            super().__init__()
            self.a, self.w, self.b = cbr(3, 6), nn.Parameter(torch.randn(6, 6, 1, 1)), cbr(6, 2)

        def forward(self, x):
            return self.b(F.conv2d(self.a(x), self.w))

    model, x = Mixed().eval(), torch.randn(1, 3, 4, 4)
    build_graph(model, x)
    assert runs == [] and len(fast_calls) == 1
    build_graph(model, x, shapes="real")
    assert len(runs) == 2 and len(fast_calls) == 1


def test_a_dead_tensors_id_does_not_name_a_new_tensor():
    from pyprune.graph._eager import _Recorder

    rec = _Recorder({}, lambda m, name: False, {}, False)
    t = torch.zeros(3)
    node = rec.input(t, 0)
    assert rec._arg(t) is node
    old = id(t)
    del t
    reused = None
    for _ in range(1000):  # CPython hands a freed address out again soon
        u = torch.zeros(3)
        if id(u) == old:
            reused = u
            break
        del u
    if reused is None:
        pytest.skip("no id was reused")
    assert rec._arg(reused).op == "constant"


_FUNCTIONAL = {
    "max_pool2d": lambda x: F.max_pool2d(x, 2),
    "adaptive_max": lambda x: F.adaptive_max_pool2d(x, 2),
    "interpolate": lambda x: F.interpolate(x, scale_factor=2),
    "dropout": lambda x: F.dropout(x, 0.1, False),
    "hardswish": lambda x: F.hardswish(x),
    "gate": lambda x: x * torch.sigmoid(x),
    "clamp": lambda x: x.clamp(0, 6),
    "pad": lambda x: F.pad(x, (1, 1, 1, 1)),
    "pad_channels_by_zero": lambda x: F.pad(x, (1, 1, 0, 0, 0, 0)),
    "max_pool_torch": lambda x: torch.max_pool2d(x, 2),
    "relu_torch_": lambda x: torch.relu_(x + 0),
    "permute_back": lambda x: x.permute(0, 2, 3, 1).permute(0, 3, 1, 2),
    "mean_gate": lambda x: x * x.mean((2, 3), keepdim=True),
    # fx keeps these two whole (x.__iadd__ is an opaque method to it, and the chunks'
    # getitems carry no shapes); the eager trace sees add_ and two spatial halves
    "iadd": lambda x: x.__iadd__(x),
    "chunk_cat": lambda x: torch.cat(x.chunk(2, dim=2), 2),
}


@pytest.mark.parametrize("name", sorted(_FUNCTIONAL))
def test_functional_ops_and_removing_zeroed_channels(name):
    torch.manual_seed(0)
    model = Between(_FUNCTIONAL[name]).eval().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    g = build_graph(model, x)
    assert g.tracer == "eager"
    grp = g.groups_of("a.0")[0]
    if name not in ("iadd", "chunk_cat"):
        assert summary(g) == summary(build_graph(model, x, tracer="fx"))
    assert grp.prunable
    plan = make_plan(g, random_scores(model, seed=0), ratio=0.5)
    drop = sorted(set(range(8)) - set(plan.keep[grp.id].tolist()))
    with torch.no_grad():  # channels with zero BN scale and shift contribute nothing
        model.a[1].weight[drop] = 0
        model.a[1].bias[drop] = 0
        before = model(x)
    apply_plan(model, plan)
    with torch.no_grad():
        after = model(x)
    assert model.a[0].out_channels == 4
    torch.testing.assert_close(after, before, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    ((3, 5), (1, 2), (0, 2), (2, 1)), ((1, 4), (3, 1), (2, 0), (1, 3)), ((2, 2), 2, 1, 1)])
def test_conv2d_shape_with_different_settings_per_dim(kernel, stride, padding, dilation):
    x = torch.randn(2, 4, 11, 13)
    layer = nn.Conv2d(4, 6, kernel, stride, padding, dilation)
    fast = _MODULE_SKIP[nn.Conv2d](layer)(x)
    assert fast.shape == layer(x).shape
    _check_skip(torch.conv2d, x, layer.weight, layer.bias, stride, padding, dilation)


def test_equal_convs_share_one_shape_planner():
    make = _MODULE_SKIP[nn.Conv2d]
    a, b = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
    assert make(a) is make(b)  # same shapes, dtype, device and settings
    listed = nn.Conv2d(4, 6, 3)
    listed.padding = [1, 1]  # unhashable: not cached, still served
    for other in (nn.Conv2d(4, 6, 3, padding=2), nn.Conv2d(4, 6, 3, padding=1, bias=False),
                  nn.Conv2d(4, 6, 3, padding=1).double(), nn.Conv2d(4, 6, 3, padding=1, stride=2),
                  listed):
        assert make(other) is not make(a)
        x = torch.randn(2, 4, 9, 9, dtype=other.weight.dtype)
        assert make(other)(x).shape == other(x).shape
