"""The activation collector and the hrank / apoz / activation criteria: known answers,
hook points, batch handling and bad inputs (clear errors, model unchanged)."""
import copy
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyprune
import pyprune.criteria.activation  # noqa: F401  (registers apoz, activation)
import pyprune.criteria.hrank  # noqa: F401  (registers hrank)
from pyprune.collect import collect
from pyprune.graph_hooks import HookPoint, activation_points

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class Net(nn.Module):
    """conv-BN-ReLU x2, pool, linear."""

    def __init__(self, c1=8, c2=6):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(c2, 4)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _data(n=12, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 8, 8, generator=g), torch.zeros(batch, dtype=torch.long))
            for _ in range(n // batch)]


X = torch.randn(1, 3, 8, 8)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    now = model.state_dict()
    return set(now) == set(state) and all(torch.equal(now[k], v) for k, v in state.items())


def _constant_channels(model):
    """conv1 channel 2: constant positive maps (rank 1); channel 5: all zero (rank 0)."""
    with torch.no_grad():
        model.conv1.weight[2].zero_()
        model.conv1.bias[2] = 0.0
        model.bn1.bias[2] = 0.7
        model.conv1.weight[5].zero_()
        model.conv1.bias[5] = 0.0
        model.bn1.bias[5] = -0.3
    return model


# known answers ------------------------------------------------------------------------
def test_hrank_constant_maps_rank_at_most_one_and_go_first():
    torch.manual_seed(0)
    model = _constant_channels(Net())
    s = pyprune.scores(model, X, method="hrank", data=_data(), progress=False)
    r = s["conv1"]
    assert r[2] == 1.0 and r[5] == 0.0
    others = torch.ones(8, dtype=torch.bool)
    others[[2, 5]] = False
    assert bool((r[others] > 1.0).all())
    w = model.conv1.weight.detach().clone()
    pyprune.prune(model, X, method="hrank", data=_data(), ratio=0.25, progress=False)
    assert model.conv1.out_channels == 6
    kept = model.conv1.weight.detach()
    # the two constant channels (zero filters) are the ones removed
    assert not bool((kept.flatten(1).abs().sum(1) == 0).any())
    expect = w[[0, 1, 3, 4, 6, 7]]
    assert torch.equal(kept, expect)


def test_apoz_dead_channels_go_first():
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.bn1.bias[3] = -1e4   # always negative before the ReLU: dead
        model.bn2.bias[1] = -1e4
    s = pyprune.scores(model, X, method="apoz", data=_data(), progress=False)
    assert s["conv1"][3] == 0.0 and s["conv2"][1] == 0.0
    assert int(s["conv1"].argmin()) == 3 and int(s["conv2"].argmin()) == 1
    assert bool((s["conv1"][torch.arange(8) != 3] > 0.1).all())
    w = model.conv1.weight.detach().clone()
    pyprune.prune(model, X, method="apoz", data=_data(), layer_ratios={"conv1": 0.125},
                  ratio=0.0, progress=False)
    assert torch.equal(model.conv1.weight.detach(), w[torch.arange(8) != 3])


def test_statistics_against_direct_computation():
    torch.manual_seed(0)
    model = Net().eval()
    data = _data(12, 4)
    acts = []
    h = model.relu1.register_forward_hook(lambda m, i, o: acts.append(o.detach().clone()))
    with torch.no_grad():
        for x, _ in data:
            model(x)
    h.remove()
    a = torch.cat(acts).double()
    res = collect(model, data, ("rank", "apoz", "mean"), example_inputs=X, progress=False)
    assert torch.allclose(res["mean"]["conv1"], a.mean((0, 2, 3)), rtol=1e-12, atol=1e-12)
    assert torch.equal(res["apoz"]["conv1"], (a == 0).double().mean((0, 2, 3)))
    ranks = torch.linalg.matrix_rank(a.float()).double().mean(0)
    assert torch.equal(res["rank"]["conv1"], ranks)
    act = pyprune.scores(model, X, method="activation", data=data, progress=False)
    assert torch.equal(act["conv1"], res["mean"]["conv1"])


# hook points -----------------------------------------------------------------------------
class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.relu = nn.ReLU()
        self.c4 = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))       # functional: read as c2's input
        z = self.c2(y)
        z += y                                 # in-place residual, then a shared ReLU module
        z = self.relu(z)
        z = self.relu(self.c3(z))              # second call of the same ReLU
        return self.c4(z)                      # no activation: own output


def test_hook_points_rule():
    m = Functional()
    pts = activation_points(m, torch.randn(1, 3, 8, 8))
    assert pts["c1"] == HookPoint("c2", 0, "input", 0, pts["c1"].tensor, "activation")
    assert (pts["c2"].module, pts["c2"].call, pts["c2"].where) == ("relu", 0, "output")
    assert (pts["c3"].module, pts["c3"].call, pts["c3"].where) == ("relu", 1, "output")
    assert (pts["c4"].module, pts["c4"].where, pts["c4"].rule) == ("c4", "output", "own")
    # collected values are those tensors
    acts = {}
    x = torch.randn(5, 3, 8, 8)
    m.eval()
    with torch.no_grad():
        y = F.relu(m.b1(m.c1(x)))
        z = m.c2(y) + y
        acts["c2"] = torch.relu(z)
        acts["c3"] = torch.relu(m.c3(acts["c2"]))
        acts["c1"], acts["c4"] = y, m.c4(acts["c3"])
    res = collect(m, [x], ("mean",), progress=False)["mean"]
    for k, a in acts.items():
        assert torch.allclose(res[k], a.double().mean((0, 2, 3)), atol=1e-6), k


def test_residual_and_own_points_on_resnet():
    m = pyprune.models.resnet20()
    pts = activation_points(m, torch.randn(1, 3, 32, 32))
    assert pts["layer1.0.conv2"].module == "layer1.0.relu2"
    assert pts["layer2.0.shortcut.0"].key == pts["layer2.0.conv2"].key
    assert all(p.rule == "activation" for p in pts.values())
    m2 = pyprune.models.mobilenetv2()
    pts2 = activation_points(m2, torch.randn(1, 3, 32, 32))
    # the linear bottleneck's projection conv has no activation: its BatchNorm output
    assert pts2["features.1.conv.1"] == HookPoint("features.1.conv.2", 0, "output", 0,
                                                 "features_1_conv_2", "own")


def test_layers_selection_and_num_images():
    model = Net()
    data = _data(12, 4)
    res = collect(model, data, ("rank", "mean"), layers=[model.conv2], num_images=6,
                  progress=False)
    assert set(res["rank"]) == {"conv2"}
    a = []
    h = model.relu2.register_forward_hook(lambda m, i, o: a.append(o.detach().clone()))
    with torch.no_grad():
        model.eval()
        model(torch.cat([data[0][0], data[1][0][:2]]))   # exactly the first 6 images
    h.remove()
    assert torch.allclose(res["mean"]["conv2"], a[0].double().mean((0, 2, 3)), atol=1e-6)
    with pytest.raises(ValueError, match="layers"):
        collect(model, data, layers=["fc"], progress=False)
    with pytest.raises(ValueError, match="layers"):
        collect(model, data, layers=["nope"], progress=False)


def test_batch_kinds_give_the_same_result():
    model = Net()
    data = _data(8, 4)
    ref = collect(model, data, ("rank",), progress=False)["rank"]
    xs = [x for x, _ in data]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        torch.cat(xs), torch.zeros(8)), batch_size=3)
    for d in (xs, [list(b) for b in data], loader, torch.cat(xs), iter(xs),
              [{"input": x} for x in xs]):
        got = collect(model, d, ("rank",), progress=False)["rank"]
        assert all(torch.equal(got[k], ref[k]) for k in ref)
    got = collect(model, [{"img": x} for x in xs], ("rank",), progress=False,
                  input_fn=lambda b: b["img"])["rank"]
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_activations_are_not_kept():
    model = Net()
    big = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    res = collect(model, big, ("rank", "apoz", "mean"), progress=False)
    for stat in res.values():
        for v in stat.values():
            assert v.shape == (v.numel(),) and v.numel() in (6, 8)
    assert not model._forward_hooks and not model.relu1._forward_hooks
    assert not model.relu2._forward_hooks and not model.conv2._forward_pre_hooks


# bad inputs: one clear error, model unchanged ---------------------------------------
BAD_DATA = [
    (None, ValueError, "data is required"),
    ([], ValueError, "data is empty"),
    (iter([]), ValueError, "data is empty"),
    (5, TypeError, "data must be an iterable"),
    ([torch.randn(4, 5, 8, 8)], ValueError, "data: batch 0 has shape"),
    ([torch.randn(4, 3, 8)], ValueError, "data: batch 0 has shape"),
    ([torch.randn(4, 3, 8, 8), "x"], TypeError, "batch 1"),
    ([torch.zeros(0, 3, 8, 8)], ValueError, "data: batch 0 has shape"),
]


@pytest.mark.parametrize("data, exc, match", BAD_DATA)
@pytest.mark.parametrize("stat", ["rank", "apoz", "mean"])
def test_bad_data_collect(data, exc, match, stat):
    model = Net().train()
    state = _state(model)
    with pytest.raises(exc, match=match):
        collect(model, data, (stat,), example_inputs=X, progress=False)
    assert _same_state(model, state) and model.training
    assert all(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("data, exc, match", BAD_DATA)
@pytest.mark.parametrize("method", ["hrank", "apoz", "activation"])
def test_bad_data_api(data, exc, match, method):
    # the API may check `data` itself first: one clear error naming data either way
    model = Net().train()
    state = _state(model)
    with pytest.raises((ValueError, TypeError), match="data"):
        pyprune.scores(model, X, method=method, data=data, progress=False)
    with pytest.raises((ValueError, TypeError), match="data"):
        pyprune.prune(model, X, method=method, data=data, progress=False)
    assert _same_state(model, state) and model.training
    assert all(m.training for m in model.modules())


def test_wrong_shape_forward_failure_names_data():
    model = Net()
    state = _state(model)
    with pytest.raises(ValueError, match="data: batch 0 of shape .* could not be run"):
        collect(model, [torch.randn(2, 3, 8, 8)], example_inputs=None, progress=False,
                input_fn=lambda b: b[:, :2])
    assert _same_state(model, state)


@pytest.mark.parametrize("stat", ["rank", "apoz", "mean"])
def test_non_finite_maps(stat):
    model = Net().train()
    state = _state(model)
    x = torch.randn(4, 3, 8, 8)
    x[1, :, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="data: .*NaN or Inf"):
        collect(model, [torch.randn(4, 3, 8, 8), x], (stat,), progress=False)
    assert _same_state(model, state) and model.training


def test_bad_options():
    model = Net()
    with pytest.raises(ValueError, match="num_images"):
        collect(model, _data(), num_images=0)
    with pytest.raises(ValueError, match="statistics"):
        collect(model, _data(), ("var",))
    with pytest.raises(TypeError, match="bogus"):
        pyprune.scores(model, X, method="hrank", data=_data(), bogus=1)


def test_training_flags_restored_and_model_unchanged():
    model = Net().train()
    model.bn2.eval()          # a mixed state is restored module by module
    state = _state(model)
    collect(model, _data(), ("rank", "apoz"), progress=False)
    assert model.training and model.bn1.training and not model.bn2.training
    assert _same_state(model, state)   # BN running stats untouched (eval mode)


def test_training_flag_restored_on_error():
    model = Net().train()

    seen = []

    def boom(batch):          # fails on the second batch, after one forward pass
        seen.append(1)
        if len(seen) == 2:
            raise RuntimeError("boom")
        return batch[0]

    with pytest.raises(RuntimeError, match="boom"):
        collect(model, _data(), progress=False, input_fn=boom)
    assert len(seen) == 2
    assert model.training and all(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_progress_bar(capsys):
    model = Net()
    collect(model, _data(), progress=False)
    assert capsys.readouterr().err == ""
    # a short pass shows no bar even with progress=True (tqdm delay=2 s)
    collect(model, _data(), progress=True)
    assert capsys.readouterr().err == ""


def test_hrank_paper_compress_rates_as_layer_ratios():
    # README example: VGG-16 --compress_rate [0.95]+[0.5]*6+[0.9]*4+[0.8]*2, i-th rate to
    # the i-th conv; the reference prunes the first 12 convs (f - int(rate * f) kept)
    torch.manual_seed(0)
    model = pyprune.models.vgg16_bn()
    x = torch.randn(1, 3, 32, 32)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    rates = [0.95] + [0.5] * 6 + [0.9] * 4 + [0.8] * 2
    widths = [model.get_submodule(c).out_channels for c in convs]
    pyprune.prune(model, x, method="hrank", data=[torch.randn(2, 3, 32, 32)], ratio=0.0,
                  layer_ratios=dict(zip(convs[:12], rates[:12])), progress=False)
    got = [model.get_submodule(c).out_channels for c in convs]
    assert got == [f - int(r * f) for f, r in zip(widths[:12], rates[:12])] + [512]
    assert got == [4, 32, 64, 64, 128, 128, 128, 52, 52, 52, 52, 103, 512]
