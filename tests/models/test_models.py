"""Reference CIFAR models: construction, shapes, gradients, fx tracing, sizes."""
from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from pyprune.models import (
    VGG,
    CifarResNet,
    DenseNet,
    MobileNetV2,
    densenet40,
    get_model,
    list_models,
    mobilenetv2,
    resnet20,
    resnet32,
    resnet56,
    resnet110,
    vgg11_bn,
    vgg13_bn,
    vgg16_bn,
    vgg19_bn,
)

ALL_MODELS = [
    "densenet40",
    "mobilenetv2",
    "resnet110",
    "resnet20",
    "resnet32",
    "resnet56",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
]

# Exact parameter counts (10 classes, BatchNorm included), and the published size of
# the architecture with a relative tolerance (He et al. 2016 for the ResNets, whose
# option-A shortcuts have no parameters; HRank for VGG-16 and DenseNet-40, which do not
# count BatchNorm; the MobileNetV2 CIFAR port is commonly quoted at 2.2-2.3M).
EXPECTED_PARAMS = {
    "vgg11_bn": 9_492_042,
    "vgg13_bn": 9_676_746,
    "vgg16_bn": 14_987_722,
    "vgg19_bn": 20_298_698,
    "resnet20": 272_474,
    "resnet32": 466_906,
    "resnet56": 855_770,
    "resnet110": 1_730_714,
    "densenet40": 1_059_298,
    "mobilenetv2": 2_236_682,
}
PUBLISHED_PARAMS = {  # name: (millions, relative tolerance)
    "resnet20": (0.27, 0.02),
    "resnet32": (0.46, 0.02),
    "resnet56": (0.85, 0.02),
    "resnet110": (1.7, 0.03),
    "vgg16_bn": (14.98, 0.005),
    "densenet40": (1.04, 0.02),
    "mobilenetv2": (2.25, 0.03),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models() -> None:
    assert list_models() == ALL_MODELS


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, num_classes=7)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_symbolic_trace_matches_eager(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name).eval()
    traced = torch.fx.symbolic_trace(model)
    called = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    leaves = {n for n, m in model.named_modules() if next(m.children(), None) is None}
    assert called == leaves  # every leaf module appears in the graph
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_each_module_called_once(name: str) -> None:
    model = get_model(name).eval()
    counts = {}
    handles = []
    for mname, module in model.named_modules():
        if next(module.children(), None) is None:
            counts[mname] = 0

            def hook(m: nn.Module, i: object, o: object, key: str = mname) -> None:
                counts[key] += 1

            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    assert counts and all(c == 1 for c in counts.values()), counts


@pytest.mark.parametrize("name", ALL_MODELS)
def test_param_counts(name: str) -> None:
    model = get_model(name)
    assert n_params(model) == EXPECTED_PARAMS[name]
    if name in PUBLISHED_PARAMS:
        millions, rel = PUBLISHED_PARAMS[name]
        assert n_params(model) == pytest.approx(millions * 1e6, rel=rel)


def test_deterministic_construction() -> None:
    torch.manual_seed(123)
    a = resnet20()
    torch.manual_seed(123)
    b = resnet20()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


def test_factories_and_classes() -> None:
    assert isinstance(vgg11_bn(), VGG)
    assert isinstance(vgg13_bn(), VGG)
    assert isinstance(vgg16_bn(), VGG)
    assert isinstance(vgg19_bn(), VGG)
    for f in (resnet20, resnet32, resnet56, resnet110):
        assert isinstance(f(), CifarResNet)
    assert isinstance(densenet40(), DenseNet)
    assert isinstance(mobilenetv2(), MobileNetV2)
    assert isinstance(get_model("VGG16-BN"), VGG)


def test_resnet_depth_and_option_b_shortcuts() -> None:
    model = resnet56()
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 27
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(1 for c in convs if c.kernel_size == (3, 3)) == 55
    projections = [c for c in convs if c.kernel_size == (1, 1)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in projections] == [
        (16, 32, (2, 2)),
        (32, 64, (2, 2)),
    ]
    assert isinstance(model.layer2[0].shortcut, nn.Sequential)
    assert isinstance(model.layer2[1].shortcut, nn.Identity)


def test_densenet40_structure() -> None:
    model = densenet40()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 36 + 2
    assert model.trans1.conv.in_channels == model.trans1.conv.out_channels == 168
    assert model.trans2.conv.in_channels == model.trans2.conv.out_channels == 312
    assert model.fc.in_features == 456
    assert all(c.bias is None for c in convs)


def test_mobilenetv2_structure() -> None:
    model = mobilenetv2()
    depthwise = [m for m in model.modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    assert len(depthwise) == 17
    residual = [m for m in model.modules() if getattr(m, "use_res_connect", False)]
    assert len(residual) == 10
    assert model.features[0][0].stride == (1, 1)
    with torch.no_grad():
        feats = model.features(torch.zeros(1, 3, 32, 32))
    assert feats.shape == (1, 1280, 4, 4)


def test_vgg16_classifier_and_width() -> None:
    model = vgg16_bn()
    assert [type(m).__name__ for m in model.classifier] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert model.classifier.linear1.in_features == 512
    assert model.classifier.linear1.out_features == 512
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256,
                                               512, 512, 512, 512, 512, 512]
    half = vgg16_bn(width=0.5)
    assert [c.out_channels for c in half.features if isinstance(c, nn.Conv2d)][:2] == [32, 32]
    out = half.eval()(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 10)


def test_vgg16x4_param_count_on_meta() -> None:
    with torch.device("meta"):
        model = vgg16_bn(width=4)
    assert n_params(model) == 236_435_722
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 256 and convs[-1].out_channels == 2048


def test_mobilenetv2_width() -> None:
    slim = mobilenetv2(width=0.5)
    assert n_params(slim) < n_params(mobilenetv2())
    assert slim.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("bad", ["resnet57", "alexnet", ""])
def test_get_model_unknown(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        get_model(bad)


def test_get_model_type_error() -> None:
    with pytest.raises(TypeError, match="name must be a str"):
        get_model(56)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"width": -1.0}])
def test_bad_width(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="width must be positive"):
        vgg16_bn(**kwargs)
    with pytest.raises(ValueError, match="width must be positive"):
        mobilenetv2(**kwargs)


def test_bad_depth() -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(57)
    with pytest.raises(ValueError, match="3n\\+4"):
        DenseNet(depth=41)
