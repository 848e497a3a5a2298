"""pyprune.profile: exact counts on hand-computed models, published figures, invariants."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pyprune.models import densenet40, resnet20, resnet56, vgg16_bn
from pyprune.profile import MAC_RULES, LayerProfile, Profile, profile


class Tiny(nn.Module):
    """Grouped conv, depthwise conv, conv-transpose, Conv1d and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, kernel_size=3, padding=1, groups=2)          # bias
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, kernel_size=3, stride=2, padding=1, groups=8, bias=False)
        self.up = nn.ConvTranspose2d(8, 4, kernel_size=2, stride=2, bias=False)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.conv1d = nn.Conv1d(1, 2, kernel_size=3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))       # (B, 8, 5, 5)
        x = self.dw(x)                             # (B, 8, 3, 3)
        x = self.up(x)                             # (B, 4, 6, 6)
        x = torch.flatten(self.pool(x), 1)         # (B, 4)
        x = self.conv1d(x.unsqueeze(1))            # (B, 2, 4)
        return self.fc(torch.flatten(x, 1))        # (B, 5)


# Hand-computed per-sample counts for Tiny on a (B, 4, 5, 5) input.
TINY_EXPECTED = {
    # name: (type, params, macs, output shape without batch)
    "conv": ("Conv2d", 8 * 2 * 9 + 8, (8 * 5 * 5) * (4 // 2) * 9, (8, 5, 5)),     # 152, 3600
    "bn": ("BatchNorm2d", 16, 0, (8, 5, 5)),
    "relu": ("ReLU", 0, 0, (8, 5, 5)),
    "dw": ("Conv2d", 8 * 1 * 9, (8 * 3 * 3) * 1 * 9, (8, 3, 3)),                 # 72, 648
    "up": ("ConvTranspose2d", 8 * 4 * 4, (8 * 3 * 3) * 4 * 4, (4, 6, 6)),         # 128, 1152
    "pool": ("AdaptiveAvgPool2d", 0, 0, (4, 1, 1)),
    "conv1d": ("Conv1d", 2 * 1 * 3 + 2, (2 * 4) * 1 * 3, (2, 4)),                 # 8, 24
    "fc": ("Linear", 8 * 5 + 5, 5 * 8, (5,)),                                     # 45, 40
}


def test_tiny_model_exact() -> None:
    model = Tiny()
    batch = 3
    p = profile(model, torch.randn(batch, 4, 5, 5))
    assert isinstance(p, Profile)
    assert [layer.name for layer in p.layers] == list(TINY_EXPECTED)
    for layer in p.layers:
        assert isinstance(layer, LayerProfile)
        typ, params, macs, shape = TINY_EXPECTED[layer.name]
        assert layer.type == typ
        assert layer.params == params, layer.name
        assert layer.macs == macs, layer.name
        assert layer.flops == 2 * macs
        assert layer.output_shape == (batch, *shape)
        assert layer.calls == 1
    assert p.macs == 3600 + 648 + 1152 + 24 + 40 == 5464
    assert p.flops == 2 * 5464
    assert p.params == 152 + 16 + 72 + 128 + 8 + 45 == sum(q.numel() for q in model.parameters())
    assert p.batch_size == batch
    assert p.params_of("Conv2d", nn.Linear) == 152 + 72 + 45
    assert p.macs_of(nn.ConvTranspose2d) == 1152


def test_shared_parameters_and_repeated_calls() -> None:
    lin = nn.Linear(6, 6, bias=False)
    tied = nn.Linear(6, 6, bias=False)
    tied.weight = lin.weight
    model = nn.Sequential(lin, nn.ReLU(), tied)
    p = profile(model, torch.zeros(2, 6))
    assert p.params == 36
    assert [layer.params for layer in p.layers] == [36, 0, 0]
    assert p.macs == 2 * 36

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    q = profile(Twice(), torch.zeros(5, 4))
    assert len(q.layers) == 1
    assert q.layers[0].calls == 2
    assert q.macs == 2 * 16
    assert q.params == 20


def test_leaf_model_and_functional_ops() -> None:
    p = profile(nn.Conv2d(3, 4, 1, bias=False), torch.zeros(1, 3, 2, 2))
    assert [(layer.name, layer.macs) for layer in p.layers] == [("", 4 * 4 * 3)]
    assert "(model)" in str(p)


def test_input_forms() -> None:
    class TwoIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 2)
            self.b = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    model = TwoIn()
    x, y = torch.zeros(4, 3), torch.zeros(4, 4)
    expected = 2 * 3 + 2 * 4
    assert profile(model, (x, y)).macs == expected
    assert profile(model, [x, y]).macs == expected
    assert profile(model, {"x": x, "y": y}).macs == expected


def test_errors() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        profile(lambda t: t, torch.zeros(1, 3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="example_inputs"):
        profile(nn.ReLU(), [1, 2])
    with pytest.raises(ValueError, match="batch dimension"):
        profile(nn.ReLU(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="batch size must be positive"):
        profile(nn.ReLU(), torch.zeros(0, 3))


def test_batch_size_invariance() -> None:
    model = resnet20()
    p1 = profile(model, torch.randn(1, 3, 32, 32))
    p4 = profile(model, torch.randn(4, 3, 32, 32))
    assert p1.batch_size == 1 and p4.batch_size == 4
    assert (p1.params, p1.macs, p1.flops) == (p4.params, p4.macs, p4.flops)
    assert [(a.name, a.params, a.macs) for a in p1.layers] == [(b.name, b.params, b.macs) for b in p4.layers]
    assert [a.output_shape[1:] for a in p1.layers] == [b.output_shape[1:] for b in p4.layers]
    assert all(b.output_shape[0] == 4 for b in p4.layers)


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_training_flags_restored(mode: str) -> None:
    model = resnet20()
    if mode == "train":
        model.train()
    elif mode == "eval":
        model.eval()
    else:
        model.train()
        model.bn1.eval()
        model.layer2.eval()
    before = {name: m.training for name, m in model.named_modules()}
    bn_stats = model.bn1.running_mean.clone()
    profile(model, torch.randn(2, 3, 32, 32))
    assert {name: m.training for name, m in model.named_modules()} == before
    # eval mode during the pass: BatchNorm running statistics are untouched
    torch.testing.assert_close(model.bn1.running_mean, bn_stats, rtol=0, atol=0)
    assert all(not m._forward_hooks for m in model.modules())


def test_restores_state_when_forward_fails() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).view(7, -1)

    model = Broken().train()
    with pytest.raises(RuntimeError):
        profile(model, torch.zeros(2, 3))
    assert model.training and model.fc.training
    assert not model.fc._forward_hooks


def test_no_grad_during_pass() -> None:
    seen = []
    model = nn.Linear(2, 2)
    model.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    profile(model, torch.zeros(1, 2, requires_grad=True))
    assert seen == [False]
    assert len(model._forward_hooks) == 1  # the user's own hook is kept


def test_str_table() -> None:
    p = profile(Tiny(), torch.zeros(2, 4, 5, 5))
    text = str(p)
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "type", "output", "shape", "params", "MACs"]
    for name in TINY_EXPECTED:
        assert any(line.startswith(name + " ") for line in lines)
    assert "5,464" in text and "ConvTranspose2d" in text and "2x4x6x6" in text
    assert "batch size 2" in lines[-1]


def test_mac_rules_cover_conv_and_linear() -> None:
    for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                nn.ConvTranspose3d, nn.Linear):
        assert cls in MAC_RULES
    assert nn.BatchNorm2d not in MAC_RULES


def test_conv3d_and_subclass_rule() -> None:
    class MyConv(nn.Conv2d):
        pass

    p = profile(nn.Sequential(MyConv(2, 3, 1), nn.Flatten(), nn.Unflatten(1, (3, 1, 2, 2)),
                              nn.Conv3d(3, 2, kernel_size=(1, 2, 2))), torch.zeros(1, 2, 2, 2))
    assert p.layers[0].macs == 3 * 4 * 2
    assert p.layers[-1].macs == 2 * 1 * (3 * 4)


def test_resnet56_analytic() -> None:
    """Conv and linear MACs of the option-B ResNet-56, summed by hand."""
    stem = 16 * 32 * 32 * 3 * 9
    stage1 = 18 * (16 * 32 * 32 * 16 * 9)
    stage2 = 32 * 16 * 16 * 16 * 9 + 17 * (32 * 16 * 16 * 32 * 9)
    stage3 = 64 * 8 * 8 * 32 * 9 + 17 * (64 * 8 * 8 * 64 * 9)
    projections = 32 * 16 * 16 * 16 + 64 * 8 * 8 * 32
    fc = 64 * 10
    p = profile(resnet56(), torch.zeros(1, 3, 32, 32))
    assert p.macs == stem + stage1 + stage2 + stage3 + projections + fc == 125_747_840
    # HRank's 125.49M is the option-A network: ours minus the two projections
    assert p.macs - projections - 125_485_696 == 0


# HRank (Lin et al., CVPR 2020), Tables 1-3: (params, "FLOPs") of the CIFAR-10 baselines.
# Their "FLOPs" are multiply-accumulates of convs and linears (get_flops.py) and their
# params count conv and linear layers only (no BatchNorm). Tolerance: 0.5%; the
# differences are explained in the pyprune.profile docstring.
PUBLISHED = {
    "vgg16_bn": (vgg16_bn, 14.98e6, 313.73e6, 14_987_722, 313_463_808),
    "resnet56": (resnet56, 0.85e6, 125.49e6, 855_770, 125_747_840),
    "densenet40": (densenet40, 1.04e6, 282.00e6, 1_059_298, 282_917_328),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_hrank_counts(name: str) -> None:
    factory, pub_params, pub_flops, exact_params, exact_macs = PUBLISHED[name]
    p = profile(factory(), torch.zeros(1, 3, 32, 32))
    assert p.params == exact_params
    assert p.macs == exact_macs
    assert p.flops == 2 * p.macs
    hrank_params = p.params_of(nn.Conv2d, nn.Linear)
    bn_params = p.params_of(nn.BatchNorm2d, nn.BatchNorm1d)
    assert hrank_params + bn_params == p.params
    assert hrank_params == pytest.approx(pub_params, rel=0.005)
    assert p.macs == pytest.approx(pub_flops, rel=0.005)
    # the papers' "FLOPs" are MACs: twice them is far off
    assert p.flops != pytest.approx(pub_flops, rel=0.5)
