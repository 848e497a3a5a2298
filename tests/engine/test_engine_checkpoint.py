"""Engine model files: self-describing pyprune files, state_dicts, wrong architectures."""
import os

import pytest
import torch

import pyprune
from pyprune.engine import UsageError
from pyprune.engine import checkpoint as ckpt
from pyprune.engine.job import layer_widths, prune_to_budget

pytestmark = pytest.mark.usefixtures("torch_single_thread")

KW = {"width": 0.125}


def _pruned():
    torch.manual_seed(0)
    m = ckpt.build_model("vgg11_bn", 10, KW)
    pyprune.prune(m, torch.randn(1, 3, 16, 16), "l1", ratio=0.5)
    return m.eval()


def test_roundtrip_records_the_model(tmp_path):
    m = _pruned()
    spec = ckpt.model_spec("vgg11_bn", 10, 16, (0.5,) * 3, (0.25,) * 3, KW)
    path = str(tmp_path / "m.pt")
    ckpt.save_model(m, spec, path)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    back, got_spec = ckpt.load_model(path)
    assert got_spec == spec
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(back.eval()(x), m(x))
    # still an ordinary pyprune.save file
    again = pyprune.load(path, lambda: ckpt.build_model("vgg11_bn", 10, KW))
    assert torch.equal(again.eval()(x), m(x))


def test_wrong_architecture_and_bad_files(tmp_path):
    path = str(tmp_path / "r.pt")
    torch.save(ckpt.build_model("resnet20", 10).state_dict(), path)
    with pytest.raises(UsageError, match="another architecture"):
        ckpt.load_model(path, model="vgg11_bn", kwargs=KW)
    net, spec = ckpt.load_model(path, model="resnet20")  # the right one loads
    assert spec["model"] == "resnet20"
    with pytest.raises(UsageError, match="--model"):
        ckpt.load_model(path)
    spec_path = str(tmp_path / "m.pt")
    ckpt.save_model(_pruned(), ckpt.model_spec("vgg11_bn", 10, 16, (0.5,) * 3, (0.25,) * 3, KW), spec_path)
    with pytest.raises(UsageError, match="holds a vgg11_bn model"):
        ckpt.load_model(spec_path, model="resnet20")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="cannot read"):
        ckpt.load_model(str(junk), model="resnet20")
    with pytest.raises(UsageError, match="does not exist"):
        ckpt.load_model(str(tmp_path / "none.pt"), model="resnet20")


def test_model_tensor_roundtrip():
    m = _pruned()
    t = ckpt.model_to_tensor(m)
    assert t.dtype == torch.uint8
    back = ckpt.model_from_tensor(t, lambda: ckpt.build_model("vgg11_bn", 10, KW))
    for (k, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def test_prune_to_budget_meets_flops_and_layer_widths():
    torch.manual_seed(0)
    m = ckpt.build_model("vgg11_bn", 10, KW)
    dense = ckpt.clone_model(m)
    x = torch.randn(1, 3, 16, 16)
    info = prune_to_budget(m, x, "l1", None, flops=0.5, image_size=16)
    d = pyprune.profile(dense, x)
    p = pyprune.profile(m, x)
    assert info["achieved_flops"] == pytest.approx(p.flops / d.flops)
    assert abs(p.flops / d.flops - 0.5) < 0.03
    rows = layer_widths(dense, m)
    conv0 = next(r for r in rows if r["name"] == "features.0")
    assert conv0["before"] == 8 and conv0["after"] == m.features[0].out_channels
    assert rows[-1]["after"] == 10  # the output layer is never pruned
    with pytest.raises(UsageError, match="--flops 0.0001"):
        prune_to_budget(ckpt.clone_model(dense), x, "l1", None, flops=0.0001, image_size=16)
