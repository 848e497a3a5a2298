"""save / load: plain-data files (weights_only) that rebuild the pruned model."""
from __future__ import annotations

import os
import stat

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
    with pytest.raises(ValueError, match="not a pyprune file"):
        load(tmp_path / "x.pt", factory)
    _, path = pruned(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "v.pt")
    with pytest.raises(ValueError, match="version"):
        load(tmp_path / "v.pt", factory)
    with pytest.raises(TypeError, match="nn.Module"):
        load(path, lambda: 3)
    with pytest.raises(ValueError, match=r"architecture mismatch: tensor '0.weight' has shape \(2, 2\)"):
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


# ---------------------------------------------------------------------------------
# foreign files, bad factories, architecture mismatches, atomic writes, summaries
# ---------------------------------------------------------------------------------
def _foreign_files(tmp_path):
    import zipfile

    (tmp_path / "a.txt").write_text("hello, not a model\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "random.bin").write_bytes(bytes(range(256)) * 8)
    torch.save(factory().state_dict(), tmp_path / "state_dict.pt")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save(factory(), tmp_path / "module.pt")  # a pickled nn.Module: not plain data
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "a zip that is not a torch file")
    return ["a.txt", "empty.pt", "random.bin", "state_dict.pt", "tensor.pt", "list.pt",
            "module.pt", "other.zip"]


def test_foreign_files_are_not_pyprune_files(tmp_path):
    for name in _foreign_files(tmp_path):
        with pytest.raises(ValueError, match=r"is not a pyprune file") as e:
            load(tmp_path / name, factory)
        assert "KeyError" not in str(e.value), name
    with pytest.raises(ValueError, match=r"plain state_dict loads with model.load_state_dict"):
        load(tmp_path / "state_dict.pt", factory)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pt", factory)
    with pytest.raises(IsADirectoryError):
        load(tmp_path, factory)


def test_factory_must_be_a_callable_returning_the_dense_model(tmp_path):
    _, path = pruned(tmp_path)
    for bad in (factory(), 3, "factory"):
        with pytest.raises(TypeError, match=r"factory must be a callable returning the dense "
                                             r"model"):
            load(path, bad)
    with pytest.raises(TypeError, match=r"factory must be a callable returning the dense model: "
                                         r"factory\(\) returned int"):
        load(path, lambda: 3)


def _variant(kernel=3, extra=False, drop_last=False, width=8):
    def make():
        torch.manual_seed(0)
        layers = [nn.Conv2d(3, width, kernel, padding=kernel // 2), nn.BatchNorm2d(width),
                  nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, groups=width),
                  nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 6, 3, padding=1),
                  nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5)]
        if extra:
            layers.append(nn.Linear(5, 5))
        if drop_last:
            layers = layers[:-1]
        return nn.Sequential(*layers)
    return make


def test_architecture_mismatch_names_the_first_tensor_that_differs(tmp_path):
    _, path = pruned(tmp_path)
    with pytest.raises(ValueError, match=r"architecture mismatch: tensor '0.weight' has shape "
                                         r"\(8, 3, 5, 5\) in the model built by factory, but "
                                         r"\(4, 3, 3, 3\) in the file \(dim 2 is not pruned\)"):
        load(path, _variant(kernel=5))
    with pytest.raises(ValueError, match=r"architecture mismatch: the model built by factory "
                                         r"has tensor '10.weight' \(5, 5\), which the file lacks"):
        load(path, _variant(extra=True))
    with pytest.raises(ValueError, match=r"architecture mismatch: the file has tensor "
                                         r"'9.weight'.*which the model built by factory lacks"):
        load(path, _variant(drop_last=True))
    with pytest.raises(ValueError, match=r"architecture mismatch: tensor '0.weight' has shape "
                                         r"\(2, 3, 3, 3\).*keeps index"):
        load(path, _variant(width=2))
    assert load(path, _variant()) is not None  # the same architecture loads


def test_save_is_atomic(tmp_path, monkeypatch):
    model, path = pruned(tmp_path)
    before = path.read_bytes()
    import pyprune.io as io

    real = torch.save

    def failing(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io.torch, "save", failing)
    with pytest.raises(OSError, match="disk full"):
        save(model, path)
    monkeypatch.setattr(io.torch, "save", real)
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary left
    api.prune(model, X, "random", 0.5, seed=7)
    save(model, path)  # replaces the file
    assert len(torch.load(path, weights_only=True)["history"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask  # as open(path, "wb")


def test_save_and_load_file_objects_and_summaries(tmp_path):
    import io as _io
    from pyprune.summary import summaries

    model = factory().eval()
    api.prune(model, X, "random", 0.5, seed=0)
    api.prune(model, X, "l1", 0.3)
    buf = _io.BytesIO()
    save(model, buf)
    buf.seek(0)
    loaded = load(buf, factory).eval()
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))
    assert [s.to_dict() for s in summaries(loaded)] == [s.to_dict() for s in summaries(model)]
    assert [s.method for s in summaries(loaded)] == ["random", "l1"]
