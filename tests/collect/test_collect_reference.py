"""HRank one-pass collection == the reference procedure on the same images.

The reference (lmbxmu/HRank ``rank_generation.py``): hook ONE ReLU at a time, re-run the
network over the images for every layer, one rank per (image, channel) map.  Here each
map's rank comes from a float64 SVD of its values under the float32 tolerance rule of
``torch.linalg.matrix_rank`` (``sigma > eps_f32 * max(H, W) * sigma_max``), so the
reference is unambiguous; maps with a singular value within 1% of the tolerance (none
expected, counted and bounded) may differ by the count of those values.
The hook points are written out here by hand, as the reference code does.
"""
import pytest
import torch

import pyprune
from pyprune.collect import collect

pytestmark = pytest.mark.usefixtures("torch_single_thread")

EPS32 = torch.finfo(torch.float32).eps


def _reference_ranks(model, images, relu_name, batch):
    """Sum over images of each channel's map rank at module ``relu_name`` (one layer hooked),
    plus the lower/upper bounds for maps with a singular value within 1% of tol."""
    module = dict(model.named_modules())[relu_name]
    acc = {}

    def hook(mod, inp, out):
        a = out.detach().double()
        n, c, h, w = a.shape
        sv = torch.linalg.svdvals(a.reshape(n * c, h, w))           # float64 SVD per map
        tol = EPS32 * max(h, w) * sv[:, :1]
        exact = (sv > tol).sum(1).reshape(n, c)
        lo = (sv > tol * 1.01).sum(1).reshape(n, c)
        hi = (sv > tol * 0.99).sum(1).reshape(n, c)
        for k, v in (("exact", exact), ("lo", lo), ("hi", hi)):
            acc[k] = acc.get(k, 0) + v.sum(0)

    h = module.register_forward_hook(hook)
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, images.shape[0], batch):
                model(images[i:i + batch])                            # network re-run per layer
    finally:
        h.remove()
    return acc


def _check(model, reference_points, images, batch):
    data = [(images[i:i + batch], torch.zeros(batch)) for i in range(0, images.shape[0], batch)]
    ours = collect(model, data, ("rank",), example_inputs=images[:1], progress=False)["rank"]
    assert set(ours) == set(reference_points)
    n = images.shape[0]
    ambiguous = 0
    for conv, relu in reference_points.items():
        ref = _reference_ranks(model, images, relu, batch)
        got = ours[conv] * n
        assert torch.allclose(got, got.round(), atol=1e-9)
        got = got.round().long()
        assert torch.all(ref["lo"] <= got) and torch.all(got <= ref["hi"]), conv
        amb = ref["lo"] != ref["hi"]
        ambiguous += int(amb.sum())
        assert torch.equal(got[~amb], ref["exact"][~amb]), conv
        assert torch.allclose(ours[conv], ref["exact"].double() / n) or amb.any()
    assert ambiguous <= 2


def test_vgg16_equals_reference():
    torch.manual_seed(0)
    model = pyprune.models.vgg16_bn()
    # VGG-16: every conv -> BN -> ReLU; HRank hooks the ReLU (features.2, 5, 9, ...)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    points = {c: f"features.{int(c.split('.')[1]) + 2}" for c in convs}
    images = torch.randn(4, 3, 32, 32)
    _check(model, points, images, batch=2)


def test_resnet56_equals_reference():
    torch.manual_seed(1)
    model = pyprune.models.resnet56()
    # ResNet-56: conv1 on `relu`; in every block conv1 on relu1, conv2 (and the projection
    # shortcut's conv, which feeds the same add) on relu2, after the residual add.
    points = {"conv1": "relu"}
    for s in (1, 2, 3):
        for b in range(9):
            p = f"layer{s}.{b}"
            points[f"{p}.conv1"] = f"{p}.relu1"
            points[f"{p}.conv2"] = f"{p}.relu2"
            if s > 1 and b == 0:
                points[f"{p}.shortcut.0"] = f"{p}.relu2"
    images = torch.randn(3, 3, 32, 32)
    _check(model, points, images, batch=2)
