"""One CIFAR-10 epoch of LeNet-5 (batch 128, Adam): vanilla vs gradient-similarity
reweighting (last layer, a = 4, k = 4, closed-form Gram matrix), and the all-layer variant,
measured side by side in one process. Goal from the issue: gradsim <= 1.15x vanilla.

    python bench/gradsim_epoch.py [--repeats 2] [--rows 50000]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nlutils import data, models, train
from nlutils.methods import gradsim


def epoch(ds, rows, hook=None, seed=0):
    net = models.build("lenet5", ds.input_shape, 10, seed=seed)
    t0 = time.perf_counter()
    train.fit(net, ds.x_train, ds.y_train[:rows], index=torch.arange(rows), epochs=1,
              batch_size=128, lr=1e-3, step_loss=hook, track_train=False, seed=seed, progress=False)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--all-rows", type=int, default=5000, help="rows for the slow all-layer variant")
    args = ap.parse_args()
    ds = data.load("cifar10")
    t = {"vanilla": [], "gradsim_last": [], "vanilla_small": [], "gradsim_all_small": []}
    epoch(ds, 2000)  # warm-up (first-call costs)
    epoch(ds, 2000, gradsim.GradSimReweight(record=False))
    for r in range(args.repeats):  # interleaved
        t["vanilla"].append(epoch(ds, args.rows, None, r))
        t["gradsim_last"].append(epoch(ds, args.rows, gradsim.GradSimReweight(record=False), r))
        t["vanilla_small"].append(epoch(ds, args.all_rows, None, r))
        t["gradsim_all_small"].append(epoch(ds, args.all_rows, gradsim.GradSimReweight(layers="all", record=False), r))
    best = {k: min(v) for k, v in t.items()}
    out = {"seconds": best, "rows": args.rows,
           "ratio_last": best["gradsim_last"] / best["vanilla"],
           "ratio_all": best["gradsim_all_small"] / best["vanilla_small"],
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(f"LeNet-5, CIFAR-10, batch 128, Adam ({torch.get_num_threads()} threads), best of {args.repeats}")
    print(f"  vanilla epoch ({args.rows} rows):            {best['vanilla']:.2f} s")
    print(f"  gradsim, last layer, closed form:        {best['gradsim_last']:.2f} s  ({out['ratio_last']:.3f}x)")
    print(f"  gradsim, all layers ({args.all_rows} rows):       {best['gradsim_all_small']:.2f} s  "
          f"({out['ratio_all']:.2f}x vanilla on the same rows)")
    res = Path(__file__).with_name("results")
    res.mkdir(exist_ok=True)
    (res / "gradsim_epoch.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
