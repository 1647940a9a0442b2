"""Datasets as normalised tensors held in memory.

Every loader returns the same :class:`Dataset`: ``x_train``/``x_test`` are float32 NCHW
tensors normalised per channel with the *training* mean and std, ``y_train``/``y_test``
are int64 tensors, and ``classes`` names the labels. Nothing is decoded per item: a batch
is ``x_train[idx]``.

Where the arrays come from (first hit wins)::

    root  ->  $NLUTILS_DATA  ->  ./data        (a file <name>.npz, see below)
    torchvision download (needs internet)      (then written as <name>.npz in ./data or root)

The ``.npz`` format: ``x_train`` uint8 (N, H, W) or (N, H, W, C) HWC, ``y_train`` int64 (N,),
``x_test``, ``y_test`` likewise. ``digits`` (scikit-learn's 8x8 digits) ships with
scikit-learn and needs no file: it is the data set of the unit tests.

Example::

    from nlutils import data
    ds = data.load("mnist")                  # Dataset(mnist: 60000 train, 10000 test, 10 classes)
    trusted, rest = data.trusted_split(ds.y_train, per_class=50, seed=0)
    val, train = data.validation_split(rest, fraction=0.1, seed=0, labels=ds.y_train)
"""
from __future__ import annotations

import functools
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

#: name -> (train shape, test shape, number of classes, class names)
SPECS: dict[str, dict] = {
    "mnist": dict(train=(60000, 28, 28), test=(10000, 28, 28), classes=[str(i) for i in range(10)]),
    "fashion_mnist": dict(
        train=(60000, 28, 28), test=(10000, 28, 28),
        classes=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
    "cifar10": dict(
        train=(50000, 32, 32, 3), test=(10000, 32, 32, 3),
        classes=["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]),
    "cifar100": dict(train=(50000, 32, 32, 3), test=(10000, 32, 32, 3),
                     classes=[f"class{i}" for i in range(100)]),
    "digits": dict(train=(1437, 8, 8), test=(360, 8, 8), classes=[str(i) for i in range(10)]),
}
DATASETS = tuple(SPECS)
_TORCHVISION = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST",
                "cifar10": "CIFAR10", "cifar100": "CIFAR100"}


@dataclass
class Dataset:
    """A labelled image data set as normalised in-memory tensors."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (f"Dataset({self.name}: {len(self.y_train)} train, {len(self.y_test)} test, "
                f"{self.num_classes} classes, input {self.input_shape})")


def search_path(root: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for ``<name>.npz``, in order."""
    dirs = []
    if root is not None:
        dirs.append(Path(root))
    if os.environ.get("NLUTILS_DATA"):
        dirs.append(Path(os.environ["NLUTILS_DATA"]))
    dirs.append(Path("data"))
    return dirs


def load(name: str, root: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Load data set ``name`` (one of :data:`DATASETS`) as normalised tensors.

    Raises ``ValueError`` for an unknown name or a corrupt/mis-shaped file and
    ``FileNotFoundError`` (naming the file, the folders searched and the fix) when the
    archive is absent and cannot be downloaded.
    """
    if name not in SPECS:
        raise ValueError(f"dataset={name!r} is unknown; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        arrays = _digits_arrays()
        source = "scikit-learn"
    else:
        path = find(name, root)
        if path is None:
            path = _download(name, root) if download else None
        if path is None:
            searched = ", ".join(str(d.resolve()) for d in search_path(root))
            raise FileNotFoundError(
                f"{name}.npz not found (searched: {searched}) and the download through "
                f"torchvision failed or was disabled. Fix: set NLUTILS_DATA to the folder that "
                f"holds {name}.npz (e.g. export NLUTILS_DATA=../shared/data), pass root=..., "
                f"or run once with internet access so that it is downloaded to ./data.")
        arrays = read_npz(path)
        source = str(path)
    check_arrays(name, arrays, source)
    return _to_dataset(name, arrays)


def find(name: str, root=None) -> Path | None:
    for d in search_path(root):
        p = d / f"{name}.npz"
        if p.is_file():
            return p
    return None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read the four arrays of a data archive; any damage becomes a ``ValueError``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
            if missing:
                raise ValueError(f"{path} lacks the arrays {sorted(missing)}")
            return {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise ValueError(f"{path} is not a readable .npz archive ({type(e).__name__}: {e}); "
                         f"delete it and fetch it again") from e


def check_arrays(name: str, a: dict[str, np.ndarray], source: str = "") -> None:
    """Verify shapes, dtypes and class counts against :data:`SPECS`."""
    spec = SPECS[name]
    k = len(spec["classes"])
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if tuple(x.shape) != spec[split]:
            raise ValueError(f"{source}: x_{split} has shape {x.shape}, expected {spec[split]}")
        if x.dtype != np.uint8:
            raise ValueError(f"{source}: x_{split} has dtype {x.dtype}, expected uint8")
        if y.shape != (spec[split][0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{source}: y_{split} has shape {y.shape} / dtype {y.dtype}, "
                             f"expected ({spec[split][0]},) integers")
        counts = np.bincount(y.astype(np.int64), minlength=k) if y.min() >= 0 else None
        if counts is None or len(counts) != k or (counts == 0).any():
            raise ValueError(f"{source}: y_{split} must use every one of the {k} classes "
                             f"(labels 0..{k - 1}); found range {y.min()}..{y.max()}")


def _to_dataset(name: str, a: dict[str, np.ndarray]) -> Dataset:
    def nchw(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x)
        t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
        return t.contiguous()

    xtr, xte = nchw(a["x_train"]), nchw(a["x_test"])
    scale = 16.0 if name == "digits" else 255.0
    xtr = xtr.float().div_(scale)
    xte = xte.float().div_(scale)
    mean = xtr.mean(dim=(0, 2, 3))
    std = xtr.std(dim=(0, 2, 3))
    shape = (1, -1, 1, 1)
    xtr.sub_(mean.view(shape)).div_(std.view(shape))
    xte.sub_(mean.view(shape)).div_(std.view(shape))
    return Dataset(name, xtr, torch.from_numpy(a["y_train"].astype(np.int64)),
                   xte, torch.from_numpy(a["y_test"].astype(np.int64)),
                   list(SPECS[name]["classes"]),
                   tuple(mean.tolist()), tuple(std.tolist()))


def _digits_arrays() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.uint8)  # values 0..16
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    tr, te = perm[:1437], perm[1437:]
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}


def _download(name: str, root=None) -> Path | None:
    """Fetch through torchvision and write ``<name>.npz``; ``None`` when impossible."""
    try:
        import tempfile

        import torchvision

        cls = getattr(torchvision.datasets, _TORCHVISION[name])
        with tempfile.TemporaryDirectory() as tmp:
            tr = cls(tmp, train=True, download=True)
            te = cls(tmp, train=False, download=True)
            arrays = {"x_train": np.asarray(tr.data, dtype=np.uint8),
                      "y_train": np.asarray(tr.targets, dtype=np.int64),
                      "x_test": np.asarray(te.data, dtype=np.uint8),
                      "y_test": np.asarray(te.targets, dtype=np.int64)}
        out = Path(root) if root is not None else Path("data")
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / f"{name}.npz", **arrays)
        return out / f"{name}.npz"
    except Exception:  # no internet, no torchvision, no disk: the caller explains
        return None


@functools.lru_cache(maxsize=None)
def class_counts(name: str) -> tuple[int, ...]:
    """Training images per class of data set ``name``, read from the labels alone (the
    parameter checks bound sizes by it before anything is trained)."""
    if name not in SPECS:
        raise ValueError(f"dataset={name!r} is unknown; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        y = _digits_arrays()["y_train"]
    elif (path := find(name)) is not None:
        with np.load(path, allow_pickle=False) as z:
            y = z["y_train"]
    else:
        y = load(name).y_train.numpy()  # the error that names the missing archive, or a download
    return tuple(int(c) for c in np.bincount(y, minlength=len(SPECS[name]["classes"])))


def cifar10n_labels(kind: str = "worse", root=None) -> torch.Tensor:
    """CIFAR-10N human labels (Wei et al., ICLR 2022; CC BY-NC 4.0), indexed like cifar10's
    ``y_train``. ``kind`` in aggre, random1, random2, random3, worse, clean."""
    kinds = ("aggre", "random1", "random2", "random3", "worse", "clean")
    if kind not in kinds:
        raise ValueError(f"kind={kind!r} is unknown; choose one of {', '.join(kinds)}")
    path = find("cifar10n_labels", root)
    if path is None:
        raise FileNotFoundError(
            "cifar10n_labels.npz not found in " + ", ".join(str(d) for d in search_path(root)) +
            ". Build it from UCSC-REAL/cifar-10-100n data/CIFAR-10_human.pt or set NLUTILS_DATA.")
    with np.load(path) as z:
        y = z[kind].astype(np.int64)
    if y.shape != (50000,) or y.min() < 0 or y.max() > 9:
        raise ValueError(f"{path}: {kind} has shape {y.shape} / range {y.min()}..{y.max()}")
    return torch.from_numpy(y)


# ---------------------------------------------------------------- splits

def trusted_split(labels: torch.Tensor, per_class: int, seed: int = 0,
                  indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``per_class`` examples of each class (by their *true* ``labels``) as a trusted,
    clean subset. Returns ``(trusted_idx, rest_idx)``, both sorted, over ``indices``
    (default: all)."""
    if per_class < 0:
        raise ValueError(f"per_class={per_class} must be >= 0")
    idx = torch.arange(len(labels)) if indices is None else torch.as_tensor(indices)
    g = torch.Generator().manual_seed(seed)
    lab = labels[idx]
    chosen = []
    for c in torch.unique(lab).tolist():
        members = idx[lab == c]
        if len(members) < per_class:
            raise ValueError(f"class {c} has only {len(members)} examples, "
                             f"fewer than per_class={per_class}")
        chosen.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    trusted = torch.sort(torch.cat(chosen)).values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[trusted] = False
    keep = torch.zeros(len(labels), dtype=torch.bool)
    keep[idx] = True
    return trusted, torch.nonzero(mask & keep).flatten()


def validation_split(indices_or_n, fraction: float = 0.1, seed: int = 0,
                     labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split off a validation part. Stratified by ``labels`` when given, so every class
    keeps its share. Returns ``(val_idx, train_idx)``, both sorted."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction} must lie in (0, 1)")
    idx = (torch.arange(indices_or_n) if isinstance(indices_or_n, int)
           else torch.as_tensor(indices_or_n))
    g = torch.Generator().manual_seed(seed)
    groups = [idx] if labels is None else [idx[labels[idx] == c]
                                           for c in torch.unique(labels[idx]).tolist()]
    val = []
    for members in groups:
        k = int(round(fraction * len(members)))
        val.append(members[torch.randperm(len(members), generator=g)[:k]])
    val = torch.sort(torch.cat(val)).values
    mask = torch.zeros(int(idx.max()) + 1, dtype=torch.bool)
    mask[idx] = True
    mask[val] = False
    return val, torch.nonzero(mask).flatten()


def stratified_subset(labels: torch.Tensor, n: int, seed: int = 12345) -> torch.Tensor:
    """Sorted indices of ``n`` examples, the same number from every class (``n`` must be a
    multiple of the number of classes): a fixed subset that copies no image. Equal to the
    trusted part of :func:`trusted_split` with ``per_class = n // K``."""
    k = len(torch.unique(labels))
    if isinstance(n, bool) or not isinstance(n, int) or n < k or n % k:
        raise ValueError(f"n_train={n!r} must be a positive multiple of the {k} classes")
    return trusted_split(labels, per_class=n // k, seed=seed)[0]
