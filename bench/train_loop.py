"""One epoch of the MNIST MLP (784-128-64-10, batch 128, Adam): our loop vs the sources' style.

The sources (the L2RW and massive-noise blogs) feed torchvision's MNIST dataset through a
DataLoader: every item is decoded to a PIL image, converted by ToTensor and Normalize, and
collated, 60,000 times per epoch. nlutils holds the normalised tensor once and batches by
index. Both run here, same machine, same process, same model and optimiser; the ratio is
printed and written to bench/results/train_loop.json.

    python bench/train_loop.py [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from nlutils import data, models, train


def torchvision_mnist(images: np.ndarray, labels: np.ndarray, folder: Path):
    """The real ``torchvision.datasets.MNIST`` class, fed by idx files written from the
    archive (no download): every item goes uint8 -> PIL image -> ToTensor -> Normalize."""
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    (raw / "train-images-idx3-ubyte").write_bytes(
        np.array([0x803, n, 28, 28], dtype=">i4").tobytes() + images.astype(np.uint8).tobytes())
    (raw / "train-labels-idx1-ubyte").write_bytes(
        np.array([0x801, n], dtype=">i4").tobytes() + labels.astype(np.uint8).tobytes())
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # unused, must exist
        src = raw / name.replace("t10k", "train")
        (raw / name).write_bytes(src.read_bytes())
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    return datasets.MNIST(str(folder), train=True, download=False, transform=tf)


def epoch_sources_style(dataset, seed=0) -> float:
    net = models.build("mlp", (1, 28, 28), 10, seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = DataLoader(dataset, batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    for xb, yb in loader:
        opt.zero_grad()
        F.cross_entropy(net(xb), yb).backward()
        opt.step()
    return time.perf_counter() - t0


def epoch_nlutils(ds, seed=0) -> float:
    net = models.build("mlp", (1, 28, 28), 10, seed=seed)
    t0 = time.perf_counter()
    train.fit(net, ds.x_train, ds.y_train, epochs=1, batch_size=128, optimizer="adam", lr=1e-3,
              track_train=False, seed=seed, progress=False)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    ds = data.load("mnist")
    path = data.find("mnist")
    with np.load(path) as z:
        images, labels = z["x_train"], z["y_train"]
    tmp = tempfile.TemporaryDirectory()
    tv = torchvision_mnist(images, labels, Path(tmp.name))
    assert len(tv) == 60000
    ours, theirs = [], []
    for r in range(args.repeats):  # interleaved, so both see the same machine state
        ours.append(epoch_nlutils(ds, seed=r))
        theirs.append(epoch_sources_style(tv, seed=r))
    tmp.cleanup()
    o, t = min(ours), min(theirs)
    out = {"nlutils_epoch_s": o, "sources_style_epoch_s": t, "speedup": t / o,
           "repeats": args.repeats, "threads": torch.get_num_threads(),
           "torch": torch.__version__}
    print(f"one MNIST epoch, MLP 784-128-64-10, batch 128, Adam ({torch.get_num_threads()} threads)")
    print(f"  sources' style (torchvision MNIST: PIL + ToTensor + Normalize per item, DataLoader): {t:6.2f} s")
    print(f"  nlutils (normalised tensor in memory, batches by index):          {o:6.2f} s")
    print(f"  speed-up: {t / o:.1f}x (best of {args.repeats} each)")
    res = Path(__file__).with_name("results")
    res.mkdir(exist_ok=True)
    (res / "train_loop.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
