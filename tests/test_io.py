"""save / load: plain-data files (weights_only) that rebuild the pruned model."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import pyprune.api as api
from pyprune.io import FORMAT, load, save


pytestmark = pytest.mark.usefixtures("torch_single_thread")


def factory():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))


X = torch.randn(2, 3, 4, 4)


def pruned(tmp_path, times=1):
    model = factory().eval()
    for i in range(times):
        api.prune(model, X, "random", 0.5, seed=i)
    path = tmp_path / "m.pt"
    save(model, path)
    return model, path


def test_round_trip_gives_identical_outputs(tmp_path):
    model, path = pruned(tmp_path)
    loaded = load(path, factory).eval()
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))
    assert loaded[3].groups == model[3].groups == 4
    assert loaded[9].in_features == model[9].in_features == 3 * 16


def test_file_is_plain_data_loadable_with_weights_only(tmp_path):
    model, path = pruned(tmp_path, times=2)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and payload["version"] == 1
    assert len(payload["history"]) == 2
    assert payload["widths"]["0"]["out_channels"] == 2
    # keep-indices relative to the original dense tensor compose both prunings
    kept = payload["keep"]["0.weight"][0]
    assert len(kept) == 2 and all(0 <= i < 8 for i in kept)
    assert payload["state_dict"]["0.weight"].shape == (2, 3, 3, 3)
    fc_cols = payload["keep"]["9.weight"][1]  # whole 4x4 blocks of the flattened map
    assert len(fc_cols) == 2 * 16 and fc_cols == sorted(fc_cols)  # 6 -> 3 -> 2 channels
    assert all(fc_cols[16 * j + i] == fc_cols[16 * j] + i for j in range(2) for i in range(16))


def test_keep_relative_to_original_matches_weights(tmp_path):
    model = factory().eval()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    api.prune(model, X, "random", 0.5, seed=0)
    api.prune(model, X, "random", 0.5, seed=1)
    save(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    for name, dims in payload["keep"].items():
        expect = dense[name]
        for dim, idx in dims.items():
            expect = expect.index_select(dim, torch.tensor(idx))
        assert torch.equal(expect, payload["state_dict"][name]), name


def test_saved_tensors_do_not_carry_old_capacity(tmp_path):
    model = factory().eval()
    for i in range(2):
        api.prune(model, X, "random", 0.5, seed=i, zero_copy=True)
    path = tmp_path / "m.pt"
    save(model, path)
    assert model[0].weight.untyped_storage().nbytes() > model[0].weight.nbytes  # in place
    for name, t in torch.load(path, weights_only=True)["state_dict"].items():
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), name


def test_unpruned_model_round_trip(tmp_path):
    model = factory().eval()
    save(model, tmp_path / "d.pt")
    loaded = load(tmp_path / "d.pt", factory).eval()
    assert torch.equal(loaded(X), model(X))


def test_load_errors(tmp_path):
    torch.save({"a": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a pyprune model file"):
        load(tmp_path / "x.pt", factory)
    _, path = pruned(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "v.pt")
    with pytest.raises(ValueError, match="version"):
        load(tmp_path / "v.pt", factory)
    with pytest.raises(TypeError, match="nn.Module"):
        load(path, lambda: 3)
    with pytest.raises(ValueError, match="does not fit"):
        load(path, lambda: nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError):
        save("model", tmp_path / "y.pt")


def test_reference_model_round_trip(tmp_path):
    models = pytest.importorskip("pyprune.models")
    model = models.get_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    api.prune(model, x, "l1", 0.5)
    save(model, tmp_path / "r.pt")
    loaded = load(tmp_path / "r.pt", lambda: models.get_model("resnet20")).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
