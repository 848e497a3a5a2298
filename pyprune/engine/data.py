"""Datasets and batch loaders for the engine, without torchvision.

A data spec string names the dataset:

* ``synthetic`` (or ``synthetic:train=6000,test=2000,size=24,seed=0``): the procedural
  shapes of :mod:`pyprune.engine.synthetic`, generated in memory, no download;
* ``cifar10:DIR``: the CIFAR-10 python release (``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch`` in ``DIR`` or ``DIR/cifar-10-batches-py``);
* ``imagefolder:DIR``: one folder per class under ``DIR/train`` and ``DIR/val`` (or
  ``DIR/test``), decoded with Pillow in worker processes.

In-memory datasets (synthetic, CIFAR-10) are uint8 tensors; batches are moved to the
device first and augmented there as batched tensor ops (random crop with padding 4,
horizontal flip), then normalised.  Shuffling and augmentation draw from a generator
seeded by ``(seed, phase, epoch)``, so an epoch's batches do not depend on what ran
before it (an interrupted run resumes to the same batches).
"""
from __future__ import annotations

import os
import pickle
import random
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UsageError
from .synthetic import CLASSES as SYNTHETIC_CLASSES, make_shapes

__all__ = ["Dataset", "InMemory", "ImageFolder", "load_data", "batches", "num_batches",
           "epoch_seed", "DEFAULT_DATA"]

DEFAULT_DATA = "synthetic"

_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class InMemory:
    """Images ``(n, 3, H, W)`` uint8 and labels ``(n,)`` int64, held in memory."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())


@dataclass
class ImageFolder:
    """Image files and labels, decoded on demand (``train`` chooses the transform)."""

    files: List[str]
    labels: List[int]
    size: int
    train: bool

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[torch.Tensor, int]:
        index, seed = key
        from PIL import Image  # lazy: Pillow comes with matplotlib, not needed below engine
        try:
            with Image.open(self.files[index]) as im:
                im = im.convert("RGB")
                im = _train_transform(im, self.size, random.Random(seed)) if self.train \
                    else _eval_transform(im, self.size)
                arr = np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise UsageError(f"cannot read image {self.files[index]}: {e}") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), self.labels[index]


def _train_transform(im: Any, size: int, rng: random.Random) -> Any:
    """Random resized crop (scale 0.25-1, aspect 3/4-4/3) to ``size``, random flip."""
    from PIL import Image
    w, h = im.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(0.25, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round((target * aspect) ** 0.5)), int(round((target / aspect) ** 0.5))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            break
    else:
        cw = ch = min(w, h)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    im = im.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return im


def _eval_transform(im: Any, size: int) -> Any:
    """Resize the shorter side to ``size / 0.875``, centre crop ``size``."""
    from PIL import Image
    w, h = im.size
    short = max(size, int(round(size / 0.875)))
    nw, nh = (short, max(short, round(h * short / w))) if w <= h else (max(short, round(w * short / h)), short)
    im = im.resize((nw, nh), Image.BILINEAR)
    x0, y0 = (nw - size) // 2, (nh - size) // 2
    return im.crop((x0, y0, x0 + size, y0 + size))


@dataclass
class Dataset:
    """A train/test split with what the model and the loaders need to know."""

    spec: str
    train: Any  # InMemory or ImageFolder
    test: Any
    classes: List[str]
    image_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    augment: str = "crop_flip"  # in-memory: batched crop+flip on the device; "none"
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _parse_kv(spec: str, text: str, allowed: Dict[str, int]) -> Dict[str, int]:
    out = dict(allowed)
    if not text:
        return out
    for item in text.split(","):
        k, sep, v = item.partition("=")
        if not sep or k.strip() not in allowed:
            raise UsageError(f"bad data spec {spec!r}: expected synthetic[:key=value,...] with keys "
                             f"{', '.join(allowed)}")
        try:
            out[k.strip()] = int(v)
        except ValueError:
            raise UsageError(f"bad data spec {spec!r}: {k.strip()} must be an integer, got {v!r}") from None
    return out


def load_data(spec: Optional[str] = None, *, image_size: Optional[int] = None) -> Dataset:
    """Open the dataset named by ``spec`` (see the module docstring); UsageError if wrong."""
    spec = DEFAULT_DATA if spec is None else str(spec)
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "synthetic":
        opts = _parse_kv(spec, rest, {"train": 6000, "test": 2000, "size": 24, "seed": 0})
        if opts["train"] < 1 or opts["test"] < 1 or opts["size"] < 8:
            raise UsageError(f"bad data spec {spec!r}: need train >= 1, test >= 1, size >= 8")
        xtr, ytr = make_shapes(opts["train"], opts["size"], seed=opts["seed"])
        xte, yte = make_shapes(opts["test"], opts["size"], seed=opts["seed"] + 1_000_003)
        return Dataset(spec, InMemory(torch.from_numpy(xtr), torch.from_numpy(ytr)),
                       InMemory(torch.from_numpy(xte), torch.from_numpy(yte)),
                       list(SYNTHETIC_CLASSES), opts["size"], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                       info=opts)
    if kind == "cifar10":
        if not rest:
            raise UsageError(f"bad data spec {spec!r}: expected cifar10:DIR")
        return _cifar10(spec, rest)
    if kind == "imagefolder":
        if not rest:
            raise UsageError(f"bad data spec {spec!r}: expected imagefolder:DIR")
        return _imagefolder(spec, rest, image_size or 224)
    raise UsageError(f"unknown data spec {spec!r}; expected synthetic, cifar10:DIR or imagefolder:DIR")


class _NumpyOnly(pickle.Unpickler):
    """Unpickler for the CIFAR-10 batches: plain containers and NumPy arrays only."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch file")


def _cifar_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _NumpyOnly(f, encoding="bytes").load()
    except OSError as e:
        raise UsageError(f"cannot read CIFAR-10 file {path}: {e.strerror or e}") from None
    except Exception as e:  # corrupt or foreign pickle
        raise UsageError(f"{path} is not a CIFAR-10 python batch file ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise UsageError(f"{path} is not a CIFAR-10 python batch file (not a dict)")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise UsageError(f"{path} is not a CIFAR-10 python batch file (needs keys data and labels, "
                         f"has {sorted(map(str, d))})")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UsageError(f"{path}: expected data uint8 (n, 3072) and n labels, got data "
                         f"{data.dtype} {tuple(data.shape)} and {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UsageError(f"{path}: labels must be in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar10(spec: str, root: str) -> Dataset:
    if not os.path.isdir(root):
        raise UsageError(f"cifar10: {root} is not a directory")
    sub = os.path.join(root, "cifar-10-batches-py")
    if not os.path.exists(os.path.join(root, "test_batch")) and os.path.isdir(sub):
        root = sub
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not os.path.isfile(os.path.join(root, n))]
    if missing:
        raise UsageError(f"cifar10:{root} lacks {', '.join(missing)} (expected the CIFAR-10 python "
                         f"release: data_batch_1..5 and test_batch)")
    parts = [_cifar_batch(os.path.join(root, n)) for n in names]
    xtr = np.concatenate([p[0] for p in parts[:5]])
    ytr = np.concatenate([p[1] for p in parts[:5]])
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return Dataset(spec, InMemory(torch.from_numpy(xtr), torch.from_numpy(ytr)),
                   InMemory(torch.from_numpy(parts[5][0].copy()), torch.from_numpy(parts[5][1])),
                   classes, 32, _CIFAR_MEAN, _CIFAR_STD)


def _scan(split_dir: str, classes: Optional[List[str]]) -> Tuple[List[str], List[str], List[int]]:
    found = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not found:
        raise UsageError(f"imagefolder: {split_dir} has no class folders (expected one folder per class)")
    if classes is not None and found != classes:
        raise UsageError(f"imagefolder: the class folders of {split_dir} ({', '.join(found)}) differ "
                         f"from those of the training split ({', '.join(classes)})")
    files: List[str] = []
    labels: List[int] = []
    for k, c in enumerate(found):
        for root, _, fnames in sorted(os.walk(os.path.join(split_dir, c))):
            for fn in sorted(fnames):
                if fn.lower().endswith(_IMAGE_EXT):
                    files.append(os.path.join(root, fn))
                    labels.append(k)
    if not files:
        raise UsageError(f"imagefolder: no image files under {split_dir}")
    return found, files, labels


def _imagefolder(spec: str, root: str, size: int) -> Dataset:
    if not os.path.isdir(root):
        raise UsageError(f"imagefolder: {root} is not a directory")
    train_dir = os.path.join(root, "train")
    test_dir = next((os.path.join(root, d) for d in ("val", "test")
                     if os.path.isdir(os.path.join(root, d))), None)
    if not os.path.isdir(train_dir) or test_dir is None:
        raise UsageError(f"imagefolder:{root} must hold train/ and val/ (or test/), each with one "
                         f"folder per class")
    classes, ftr, ltr = _scan(train_dir, None)
    _, fte, lte = _scan(test_dir, classes)
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise UsageError("imagefolder data needs Pillow (pip install pillow)") from None
    return Dataset(spec, ImageFolder(ftr, ltr, size, True), ImageFolder(fte, lte, size, False),
                   classes, size, _IMAGENET_MEAN, _IMAGENET_STD, augment="none")


def epoch_seed(seed: int, phase: str, epoch: int) -> int:
    """The generator seed of one epoch of one phase (stable across runs and resumes)."""
    return (int(seed) * 1_000_003 + sum(map(ord, phase)) * 10_007 + int(epoch)) % (2 ** 63)




def num_batches(source: Any, batch_size: int, *, train: bool, world: int = 1) -> int:
    """Batches per epoch on each rank (training drops the last partial share)."""
    n = len(source)
    per = n // world if train else -(-n // world)
    return max(0, -(-per // batch_size))


def _crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, batched."""
    b, c, h, w = x.shape
    dev = x.device
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(dev)
    flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = oy[:, None] + torch.arange(h, device=dev)[None]                     # (b, h)
    cols = torch.arange(w, device=dev)[None].expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + ox[:, None]         # (b, w)
    bi = torch.arange(b, device=dev)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]        # (b, h, w, c)
    return out.permute(0, 3, 1, 2)


def batches(ds: Dataset, split: str, batch_size: int, *, device: torch.device,
            seed: int = 0, phase: str = "eval", epoch: int = 0, rank: int = 0, world: int = 1,
            workers: int = 0, channels_last: bool = False, limit: Optional[int] = None
            ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float batches ``(x, y)`` on ``device`` of split ``"train"`` or ``"test"``.

    ``"train"`` shuffles and augments (generator seeded by :func:`epoch_seed`) and gives
    every rank the same number of samples (``n // world``); ``"test"`` keeps the order
    and strides the samples over the ranks (``rank::world``, all of them covered).
    ``limit`` stops after that many batches.
    """
    train = split == "train"
    source = ds.train if train else ds.test
    n = len(source)
    gen = torch.Generator().manual_seed(epoch_seed(seed, phase, epoch) + 7919 * rank)
    if train:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, phase, epoch)))
        per = n // world
        idx = order[rank * per:(rank + 1) * per]
    else:
        idx = torch.arange(rank, n, world)
    mean = torch.tensor(ds.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(ds.std, device=device).view(1, 3, 1, 1) * 255
    nb = -(-len(idx) // batch_size)
    if limit is not None:
        nb = min(nb, limit)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def finish(xb: torch.Tensor, yb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        xb = xb.to(device, non_blocking=True)
        if train and ds.augment == "crop_flip":
            xb = _crop_flip(xb, gen)
        xb = ((xb.float() - mean) / std).contiguous(memory_format=fmt)
        return xb, yb.to(device, non_blocking=True)

    if isinstance(source, InMemory):
        for i in range(nb):
            sel = idx[i * batch_size:(i + 1) * batch_size]
            yield finish(source.images[sel], source.labels[sel])
        return
    # files: decode in worker processes; per-sample seeds make the crops reproducible
    keys = [(int(j), epoch_seed(seed, phase, epoch) * 31 + int(j)) for j in idx[:nb * batch_size]]
    loader = torch.utils.data.DataLoader(source, batch_size=batch_size, sampler=keys, num_workers=workers,
                                         pin_memory=device.type == "cuda",
                                         persistent_workers=False)
    for i, (xb, yb) in enumerate(loader):
        if i >= nb:
            break
        yield finish(xb, yb)
