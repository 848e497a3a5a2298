"""Data specs and loaders of pyprune.engine: synthetic, CIFAR-10 pickles, image folders."""
import os
import pickle

import numpy as np
import pytest
import torch

from pyprune.engine import UsageError
from pyprune.engine.data import _crop_flip, batches, load_data, num_batches
from pyprune.engine.synthetic import CLASSES, make_shapes

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_synthetic_deterministic_balanced_and_not_constant():
    a, la = make_shapes(200, 16, seed=3)
    b, lb = make_shapes(200, 16, seed=3)
    assert a.dtype == np.uint8 and a.shape == (200, 3, 16, 16)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert np.bincount(la, minlength=len(CLASSES)).tolist() == [20] * 10
    c, _ = make_shapes(200, 16, seed=4)
    assert not np.array_equal(a, c)
    # classes differ in shape, not in colour: per-class mean colour is about the same
    means = np.stack([a[la == k].mean(axis=(0, 2, 3)) for k in range(10)])
    assert means.std(axis=0).max() < 25


def test_synthetic_spec_and_errors():
    ds = load_data("synthetic:train=50,test=20,size=12,seed=1")
    assert len(ds.train) == 50 and len(ds.test) == 20 and ds.image_size == 12 and ds.num_classes == 10
    for bad in ("synthetic:train=x", "synthetic:foo=1", "nonsense:/x", "cifar10:", "synthetic:size=2"):
        with pytest.raises(UsageError):
            load_data(bad)


def _write_cifar(root, n=20, bad=None):
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if bad == "missing" and name == "data_batch_3":
            continue
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        if bad == "shape" and name == "test_batch":
            data = data[:, :100]
        d = {b"data": data, b"labels": [int(x) for x in rng.integers(0, 10, n)], b"batch_label": b"x"}
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump(d, f)
    return root


def test_cifar10_pickles(tmp_path):
    root = _write_cifar(str(tmp_path / "cifar-10-batches-py"))
    ds = load_data(f"cifar10:{tmp_path}")  # finds the cifar-10-batches-py sub-folder
    assert len(ds.train) == 100 and len(ds.test) == 20 and ds.image_size == 32
    with open(os.path.join(root, "data_batch_1"), "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert torch.equal(ds.train.images[:20], torch.from_numpy(raw[b"data"].reshape(-1, 3, 32, 32)))
    assert ds.train.labels[:20].tolist() == raw[b"labels"]


@pytest.mark.parametrize("bad,msg", [("missing", "lacks data_batch_3"), ("shape", "expected data uint8")])
def test_cifar10_errors(tmp_path, bad, msg):
    _write_cifar(str(tmp_path), bad=bad)
    with pytest.raises(UsageError, match=msg):
        load_data(f"cifar10:{tmp_path}")


def test_cifar10_rejects_foreign_pickle(tmp_path):
    _write_cifar(str(tmp_path))
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({"data": os.path.join}, f)  # a callable: not allowed
    with pytest.raises(UsageError, match="not a CIFAR-10"):
        load_data(f"cifar10:{tmp_path}")


def _write_folder(root, splits=("train", "val"), classes=("cat", "dog"), n=3, size=(20, 14)):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(os.path.join(d, f"{i}.png"))


def test_imagefolder(tmp_path):
    _write_folder(str(tmp_path))
    ds = load_data(f"imagefolder:{tmp_path}", image_size=16)
    assert ds.classes == ["cat", "dog"] and len(ds.train) == 6 and len(ds.test) == 6
    xs = list(batches(ds, "train", 4, device=torch.device("cpu"), epoch=0))
    assert [x.shape for x, _ in xs] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    again = list(batches(ds, "train", 4, device=torch.device("cpu"), epoch=0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(xs, again))  # seeded crops
    te = list(batches(ds, "test", 8, device=torch.device("cpu")))
    assert te[0][1].tolist() == [0, 0, 0, 1, 1, 1]


def test_imagefolder_errors(tmp_path):
    _write_folder(str(tmp_path / "a"), splits=("train",))
    with pytest.raises(UsageError, match="train/ and val/"):
        load_data(f"imagefolder:{tmp_path / 'a'}")
    _write_folder(str(tmp_path / "b"), splits=("train",))
    _write_folder(str(tmp_path / "b"), splits=("test",), classes=("cat", "cow"))
    with pytest.raises(UsageError, match="differ"):
        load_data(f"imagefolder:{tmp_path / 'b'}")
    with pytest.raises(UsageError, match="not a directory"):
        load_data(f"imagefolder:{tmp_path / 'none'}")


def test_crop_flip_matches_per_sample_reference():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    gen = torch.Generator().manual_seed(1)
    got = _crop_flip(x, gen, pad=2)
    gen = torch.Generator().manual_seed(1)
    oy = torch.randint(0, 5, (2,), generator=gen)
    ox = torch.randint(0, 5, (2,), generator=gen)
    flip = torch.rand(2, generator=gen) < 0.5
    for i in range(2):
        p = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        ref = p[:, oy[i]:oy[i] + 5, ox[i]:ox[i] + 6]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(got[i], ref)


def test_shards_cover_test_split_and_balance_train():
    ds = load_data("synthetic:train=103,test=41,size=8")
    dev = torch.device("cpu")
    seen = []
    for r in range(3):
        seen += [y for _, ys in batches(ds, "test", 8, device=dev, rank=r, world=3) for y in ys.tolist()]
    assert sorted(seen) == sorted(ds.test.labels.tolist())
    sizes = [sum(len(y) for _, y in batches(ds, "train", 16, device=dev, rank=r, world=3, epoch=2))
             for r in range(3)]
    assert sizes == [34, 34, 34]
    assert num_batches(ds.train, 16, train=True, world=3) == 3
    e0 = next(batches(ds, "train", 16, device=dev, epoch=0))[1]
    e1 = next(batches(ds, "train", 16, device=dev, epoch=1))[1]
    assert not torch.equal(e0, e1)
