"""Small synthetic models, one per structure the channel graph must handle.

Every model uses activations with f(0) = 0 on its main path (and sigmoid only as a
gate), so channels whose producing weights and BN scale/shift are zero contribute
nothing, which the equivalence tests rely on.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Between(nn.Module):
    """``cbr(3, mid)``, then ``fn``, then ``cbr(mid, out)``: one op between two layers."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], mid: int = 8,
                 out: int = 4) -> None:
        super().__init__()
        self.a, self.b, self.fn = cbr(3, mid), cbr(mid, out), fn

    def forward(self, x):
        return self.b(self.fn(self.a(x)))


class ChainFlatten(nn.Module):
    """conv -> BN -> ReLU chains, then flatten of a C x H x W map into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8), nn.MaxPool2d(2), cbr(8, 12), nn.MaxPool2d(2))
        self.fc = nn.Linear(12 * 2 * 2, 5)

    def forward(self, x):
        x = self.features(x)
        return self.fc(torch.flatten(x, 1))


class Residual(nn.Module):
    """Identity shortcuts and a 1x1-conv downsample shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.b1 = nn.Sequential(cbr(8, 8), nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8))
        self.b2 = nn.Sequential(cbr(8, 16, stride=2), nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.b3 = nn.Sequential(cbr(16, 16), nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.b1(x))
        x = torch.relu(self.b2(x) + self.down(x))
        x = (self.b3(x) + x).relu()
        return self.fc(self.pool(x).view(x.size(0), -1))


class DenseCat(nn.Module):
    """torch.cat along channels (dense connectivity), and a cat feeding an add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 6)
        self.l1 = cbr(6, 4)
        self.l2 = cbr(10, 4)
        self.bn = nn.BatchNorm2d(14)
        self.proj = nn.Conv2d(14, 14, 1)  # output coupled with the concatenation
        self.head = nn.Linear(14, 3)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat((x, self.l2(x)), dim=1)
        x = F.relu(self.bn(x))
        x = x + self.proj(x)
        return self.head(x.mean(dim=(2, 3)))


class Depthwise(nn.Module):
    """Inverted residual with depthwise conv, and a depthwise conv with multiplier 2."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False),
                                nn.BatchNorm2d(16), nn.Hardswish())
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.dw2 = nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1, groups=8), nn.BatchNorm2d(16), nn.SiLU())
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        x = self.dw2(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Grouped(nn.Module):
    """A grouped (not depthwise) conv between two plain ones."""

    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 8)
        self.g = cbr(8, 8, groups=2)
        self.b = cbr(8, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.b(self.g(self.a(x)))
        return self.fc(x.mean([2, 3]))


class GroupedChain(nn.Module):
    """ResNeXt-style: a bottleneck with a grouped 3x3 and a residual add, grouped convs
    with different group counts back to back (one with a bias), a grouped
    ConvTranspose2d, and a grouped conv fed by a concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.b1 = nn.Sequential(cbr(8, 12, 1), cbr(12, 12, groups=4),
                                nn.Conv2d(12, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.g2 = cbr(8, 12, groups=2)
        self.g3 = nn.Sequential(nn.Conv2d(12, 12, 3, 1, 1, groups=3), nn.ReLU())
        self.t = nn.Sequential(nn.ConvTranspose2d(12, 8, 3, 1, 1, groups=4, bias=True),
                               nn.BatchNorm2d(8), nn.ReLU())
        self.c = cbr(3, 4)
        self.g4 = cbr(12, 6, groups=2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        s = self.stem(x)
        y = F.relu(s + self.b1(s))
        y = self.t(self.g3(self.g2(y)))
        y = self.g4(torch.cat([y, self.c(x)], 1))
        return self.fc(y.mean([2, 3]))


class SqueezeExcite(nn.Module):
    """Channel-wise multiplication: SE with Linear layers (view) and with 1x1 convs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 12)
        self.fc1 = nn.Linear(12, 4)
        self.fc2 = nn.Linear(4, 12)
        self.b = cbr(12, 10)
        self.se_c1 = nn.Conv2d(10, 3, 1)
        self.se_c2 = nn.Conv2d(3, 10, 1)
        self.gamma = nn.Parameter(torch.ones(1, 10, 1, 1))  # learnable per-channel scale
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        x = self.a(x)
        b, c = x.shape[0], x.shape[1]
        s = F.adaptive_avg_pool2d(x, 1).view(b, c)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s)))).view(b, c, 1, 1)
        x = x * s.expand_as(x)
        x = self.b(x)
        s = x.mean((2, 3), keepdim=True)
        x = x * torch.sigmoid(self.se_c2(F.relu(self.se_c1(s))))
        x = x * self.gamma
        return self.fc(x.mean([2, 3]))


class Reused(nn.Module):
    """A conv and a BN called twice (shared weights tie input and output channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.shared = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.mid = cbr(8, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.bn(self.shared(x)))
        x = F.relu(self.bn(self.shared(x)))
        return self.fc(self.mid(x).mean([2, 3]))


class Transposed(nn.Module):
    """ConvTranspose2d (weight [in, out/groups, k, k]), plain and depthwise."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = cbr(3, 8, stride=2)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.bn = nn.BatchNorm2d(6)
        self.dwt = nn.ConvTranspose2d(6, 6, 3, 1, 1, groups=6, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.up(self.enc(x))))
        x = F.relu(self.bn2(self.dwt(x)))
        return self.out(x)


class MLP(nn.Module):
    """Linear -> Linear -> Linear on flat inputs, with BatchNorm1d and dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                 nn.Dropout(0.1), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))

    def forward(self, x):
        return self.net(x)


class UNet(nn.Module):
    """Encoder-decoder: ConvTranspose upsampling concatenated with a skip connection,
    an inception-style concatenation of branches, a channels-last Linear via permute."""

    def __init__(self) -> None:
        super().__init__()
        self.e1 = cbr(3, 6)
        self.e2 = cbr(6, 8, stride=2)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2, bias=False)
        self.up_bn = nn.BatchNorm2d(6)
        self.d1 = cbr(12, 6)
        self.br1 = cbr(6, 3, k=1)
        self.br3 = cbr(6, 5)
        self.mix = nn.Linear(8, 4)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        s = self.e1(x)
        y = F.relu(self.up_bn(self.up(self.e2(s))))
        y = self.d1(torch.cat([y, s], dim=1))
        y = torch.cat([self.br1(y), self.br3(y)], 1)
        y = F.relu(self.mix(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self.out(y)


# ---- structures the graph must refuse (channels stay whole, with a reason) ----------

class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: view (n, 2, c/2) -> transpose -> view; the two
    halves are tied, so the shuffled channels stay whole blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 8)
        self.b = cbr(8, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.b(x).mean([2, 3]))


class MixingView(nn.Module):
    """Channels moved last and merged with a spatial dim as the inner index: mixes."""

    def __init__(self) -> None:
        super().__init__()
        self.a0, self.a = cbr(3, 6), cbr(6, 8)
        self.fc = nn.Linear(8 * 8, 3)

    def forward(self, x):
        y = self.a(self.a0(x))
        n, c, h, w = y.shape
        y = y.permute(0, 2, 3, 1).reshape(n, h, w * c)
        return self.fc(y.mean(1))


class ShuffleBlocks(nn.Module):
    """ShuffleNetV2 units: a stride-2 unit (two branches, cat, shuffle) then a stride-1
    unit (chunk in halves, one half through a branch, cat, shuffle)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.b1 = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False),
                                nn.BatchNorm2d(8), cbr(8, 6, 1))
        self.b2 = nn.Sequential(cbr(8, 6, 1), nn.Conv2d(6, 6, 3, 2, 1, groups=6, bias=False),
                                nn.BatchNorm2d(6), cbr(6, 6, 1))
        self.b3 = nn.Sequential(cbr(6, 6, 1), nn.Conv2d(6, 6, 3, 1, 1, groups=6, bias=False),
                                nn.BatchNorm2d(6), cbr(6, 6, 1))
        self.head = cbr(12, 10, 1)
        self.fc = nn.Linear(10, 3)

    @staticmethod
    def shuffle(x):
        n, c, h, w = x.size()
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)

    def forward(self, x):
        x = self.stem(x)
        x = self.shuffle(torch.cat((self.b1(x), self.b2(x)), dim=1))
        x1, x2 = x.chunk(2, dim=1)
        x = self.shuffle(torch.cat((x1, self.b3(x2)), dim=1))
        return self.fc(self.head(x).mean([2, 3]))


class GhostModule(nn.Module):
    """GhostNet's module as timm writes it: a primary 1x1 conv, a depthwise "cheap" conv
    on its output, both concatenated and sliced to ``out_chs`` (``[:, :out_chs]``, the
    identity when ``out_chs`` is even, a real selection of channels when it is odd)."""

    def __init__(self, cin: int, out_chs: int, relu: bool = True) -> None:
        super().__init__()
        init = (out_chs + 1) // 2
        act = [nn.ReLU()] if relu else []
        self.out_chs = out_chs
        self.primary = nn.Sequential(nn.Conv2d(cin, init, 1, bias=False), nn.BatchNorm2d(init), *act)
        self.cheap = nn.Sequential(nn.Conv2d(init, init, 3, 1, 1, groups=init, bias=False),
                                   nn.BatchNorm2d(init), *act)

    def forward(self, x):
        x1 = self.primary(x)
        return torch.cat([x1, self.cheap(x1)], dim=1)[:, :self.out_chs, :, :]


class Ghost(nn.Module):
    """A GhostNet bottleneck (ghost -> ghost, residual add) and a ghost module of odd width."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.g1, self.g2 = GhostModule(8, 12), GhostModule(12, 8, relu=False)
        self.odd = GhostModule(8, 5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.g2(self.g1(x))
        return self.fc(self.odd(x).mean([2, 3]))


class BNFunctional(nn.Module):
    """A BatchNorm class of its own that calls F.batch_norm with its parameters."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.num_features = c
        self.weight = nn.Parameter(torch.empty(c).uniform_(0.5, 1.5))
        self.bias = nn.Parameter(torch.empty(c).uniform_(-0.5, 0.5))
        self.register_buffer("running_mean", torch.empty(c).uniform_(-0.5, 0.5))
        self.register_buffer("running_var", torch.empty(c).uniform_(0.5, 2.0))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, 0.1, 1e-5)


class Functional(nn.Module):
    """Layers as custom code calls them: F.batch_norm in a module of its own,
    torch.max_pool2d, torch.relu_, F.hardswish, F.relu6, F.pad."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn_a = BNFunctional(8)
        self.b = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
        self.bn_b = BNFunctional(8)
        self.c = nn.Conv2d(8, 6, 3, 1, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu_(self.bn_a(self.a(x)))
        x = torch.max_pool2d(x, 2)
        x = F.hardswish(self.bn_b(self.b(F.pad(x, (1, 1, 1, 1)))))
        x = F.relu6(F.avg_pool2d(x, 2))
        x = F.relu(self.c(x))
        return self.fc(F.adaptive_max_pool2d(x, 1).flatten(1))


class CustomOp(nn.Module):
    """torch.roll along channels: an op without a handler."""

    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 8)
        self.b = cbr(8, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.b(torch.roll(self.a(x), 1, dims=1)).mean([2, 3]))


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, 1, 1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            return self.conv(x)
        return x


class WithUntraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 8)
        self.u = _Untraceable()
        self.b = cbr(8, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.b(self.u(self.a(x))).mean([2, 3]))


class HardCodedView(nn.Module):
    """view(-1, 8) hard-codes the channel count: those channels must stay."""

    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 6)
        self.b = cbr(6, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.b(self.a(x)), 1).view(-1, 8))


IMAGE = (2, 3, 8, 8)

# name -> (factory, input shape, expected unprunable reason substring or None)
ZOO: Dict[str, Tuple[Callable[[], nn.Module], Tuple[int, ...]]] = {
    "chain_flatten": (ChainFlatten, IMAGE),
    "residual": (Residual, IMAGE),
    "dense_cat": (DenseCat, IMAGE),
    "depthwise": (Depthwise, IMAGE),
    "grouped": (Grouped, IMAGE),
    "grouped_chain": (GroupedChain, IMAGE),
    "squeeze_excite": (SqueezeExcite, IMAGE),
    "reused": (Reused, IMAGE),
    "transposed": (Transposed, IMAGE),
    "mlp": (MLP, (4, 20)),
    "unet": (UNet, IMAGE),
    "channel_shuffle": (ChannelShuffle, IMAGE),
    "mixing_view": (MixingView, IMAGE),
    "shuffle_blocks": (ShuffleBlocks, (2, 3, 16, 16)),
    "functional": (Functional, IMAGE),
    "custom_op": (CustomOp, IMAGE),
    "untraceable": (WithUntraceable, IMAGE),
    "hard_coded_view": (HardCodedView, IMAGE),
    "ghost": (Ghost, IMAGE),
}


def make(name: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """(model in eval mode with randomised BN statistics, example input)."""
    factory, shape = ZOO[name]
    torch.manual_seed(seed)
    model = factory()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    model = model.to(dtype).eval()
    x = torch.randn(*shape, dtype=dtype)
    if name == "untraceable":
        x = x.abs()  # take the conv branch
    return model, x
