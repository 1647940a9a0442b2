"""A CNN for CIFAR-10 on a 2-core CPU: throughput, the sources' data pipeline, a clean run.

Three measurements, written to ``bench/results/cifar_cnn.json`` (run it alone: nothing else
may train on the machine while it measures):

1. ``img_s``: training images per second (forward, backward, optimiser step; batch 256,
   synthetic inputs) of LeNet-5, the fast network (``fastcnn``, widths 32/64/128) and
   airbench94's widths (``fastcnn94``, 64/256/256), in float32 and bf16 autocast, with and
   without ``channels_last``;
2. ``ratio_vs_dataloader``: the fast network trained through the sources' pipeline
   (a torchvision ``CIFAR10`` dataset: per image ``PIL`` -> ``RandomCrop(32, 4)`` ->
   ``RandomHorizontalFlip`` -> ``ToTensor`` -> ``Normalize``, a ``DataLoader``, float32,
   NCHW) against our loop (tensors in memory, batches by index, batch-level augmentation,
   bf16, ``channels_last``), measured side by side in one process, interleaved;
3. a clean CIFAR-10 training of the fast network on all 50,000 images with the
   ``fastcnn`` recipe (:data:`nlutils.recipe.FASTCNN`, a fixed number of epochs):
   ``clean_acc`` (plain test accuracy, %), ``clean_acc_tta`` (flip TTA), ``train_minutes``
   (the training steps), ``eval_minutes``, ``wall_minutes`` (all of it, whitening included),
   ``epochs``, ``peak_rss_gb``, and the per-epoch ``history`` for the book's learning curve.

    python bench/cifar_cnn.py                 # all three (about 15 minutes)
    python bench/cifar_cnn.py --skip-train    # 1 and 2 only, keeps a stored clean run
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nlutils import data, models, recipe, train

RESULTS = Path(__file__).with_name("results") / "cifar_cnn.json"
NETS = {"lenet5": {}, "fastcnn": {}, "fastcnn94": {}}


def step_throughput(name: str, precision: str, channels_last: bool, batch: int = 256,
                    steps: int = 20, warmup: int = 3) -> float:
    """Images per second of full training steps on synthetic CIFAR-shaped inputs."""
    net = models.build(name, (3, 32, 32), 10, seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = train.make_optimizer("sgd", net.parameters(), 0.01, 0.9, nesterov=True)

    def step():
        with train.autocast(precision):
            out = net(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


# ----------------------------------------------------------------- the sources' pipeline

def sources_dataset(images: np.ndarray, labels: np.ndarray, mean, std):
    """torchvision's ``CIFAR10`` class with the sources' transforms, its arrays set from the
    archive (its constructor would look for the pickled batches or download them)."""
    from torchvision import datasets, transforms

    ds = datasets.CIFAR10.__new__(datasets.CIFAR10)
    datasets.VisionDataset.__init__(ds, "unused", transform=transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(mean, std)]))
    ds.data, ds.targets, ds.train = images, labels.tolist(), True
    return ds


def sources_steps(dataset, steps: int, workers: int, seed: int) -> float:
    """Images/s of ``steps`` training steps through a DataLoader, float32, NCHW."""
    from torch.utils.data import DataLoader

    net = models.build("fastcnn", (3, 32, 32), 10, seed=seed)
    opt = train.make_optimizer("sgd", net.parameters(), 0.05, 0.9, nesterov=True)
    loader = DataLoader(dataset, batch_size=256, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed), drop_last=True)
    it = iter(loader)
    xb, yb = next(it)  # worker start-up is not counted
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(xb), yb).backward()
        opt.step()
        xb, yb = next(it)
    return 256 * steps / (time.perf_counter() - t0)


def our_steps(ds, steps: int, seed: int) -> float:
    """Images/s of the same number of steps through ``train.fit`` with the fast recipe."""
    net = models.build("fastcnn", ds.input_shape, 10, seed=seed)
    rows = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(seed))[:256 * steps]
    r = recipe.FASTCNN
    t0 = time.perf_counter()
    train.fit(net, ds.x_train, ds.y_train[rows], index=rows, epochs=1, batch_size=256,
              optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, precision=r.precision,
              augment="crop4+flip", track_train=False, seed=seed, progress=False)
    return 256 * steps / (time.perf_counter() - t0)


# ----------------------------------------------------------------- the clean run

def clean_run(ds, r: recipe.Recipe, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    net = models.build("fastcnn", ds.input_shape, ds.num_classes, seed=seed)
    models.init_whitening(net, ds.x_train[:5000])  # images only
    hist = train.fit(net, ds.x_train, ds.y_train, **r.fit_kwargs(), test=(ds.x_test, ds.y_test),
                     track_train=False, seed=seed, eval_batch_size=1024, progress=True,
                     desc="clean CIFAR-10")
    wall = time.perf_counter() - t0
    return {"clean_acc": float(hist["test_acc"].iloc[-1]),
            "clean_acc_tta": float(hist["test_acc_tta"].iloc[-1]),
            "train_minutes": float(hist["seconds"].sum()) / 60,
            "eval_minutes": float(hist["eval_seconds"].sum()) / 60,
            "wall_minutes": wall / 60, "epochs": int(len(hist)), "seed": seed,
            "recipe": r.asdict(),
            "history": hist[["epoch", "lr", "loss", "test_acc", "test_acc_tta", "seconds"]]
            .round(4).to_dict(orient="list")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--dataloader-steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out = {"threads": torch.get_num_threads(), "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "batch": 256}

    out["img_s"] = {}
    for name in NETS:
        out["img_s"][name] = {}
        for precision in ("fp32", "bf16"):
            for cl in (False, True):
                key = f"{precision}_{'channels_last' if cl else 'nchw'}"
                out["img_s"][name][key] = round(step_throughput(name, precision, cl), 1)
                print(f"{name:10s} {key:18s} {out['img_s'][name][key]:9.0f} images/s", flush=True)

    ds = data.load("cifar10")
    with np.load(data.find("cifar10")) as z:
        images, labels = z["x_train"], z["y_train"]
    src = sources_dataset(images, labels, ds.mean, ds.std)
    n = args.dataloader_steps
    theirs = {0: [], 2: []}
    ours = []
    for rep in range(2):  # interleaved, so both see the same machine state
        ours.append(our_steps(ds, n, rep))
        for w in theirs:
            theirs[w].append(sources_steps(src, n, w, rep))
    best_theirs = max(max(v) for v in theirs.values())
    out["dataloader"] = {"ours_img_s": round(max(ours), 1),
                         "sources_img_s": {f"workers{w}": round(max(v), 1) for w, v in theirs.items()},
                         "steps": n}
    out["ratio_vs_dataloader"] = round(max(ours) / best_theirs, 2)
    print(f"ours {max(ours):.0f} images/s vs the sources' pipeline {best_theirs:.0f} (best of "
          f"0 and 2 workers): {out['ratio_vs_dataloader']:.2f}x", flush=True)

    if args.skip_train and "clean_acc" in old:
        out.update({k: old[k] for k in old if k.startswith("clean") or k in (
            "train_minutes", "eval_minutes", "wall_minutes", "epochs", "peak_rss_gb", "history",
            "recipe", "seed")})
    else:
        run = clean_run(ds, recipe.FASTCNN, args.seed)
        out.update(run)
        print(f"clean CIFAR-10, {run['epochs']} epochs: {run['clean_acc']:.2f}% "
              f"({run['clean_acc_tta']:.2f}% with flip TTA), training {run['train_minutes']:.1f} "
              f"min, all {run['wall_minutes']:.1f} min", flush=True)
        out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
