"""Training throughput of the massive-noise chapter's models on MNIST-shaped inputs.

For the conv net (``conv4``: four 3x3 conv -> ReLU -> max-pool blocks of 32/64/128/256
channels, then 1000 -> 10) the four layouts of the fast engine, float32 or bf16 autocast,
NCHW or ``channels_last``: the "before" (float32, NCHW, the chapter's earlier engine) and
the "after" of the chapter; for the MLPs and the perceptron float32 only (bf16 does not
pay on matrices this small). Full training steps (forward, backward, Adadelta step) at
batch 128 (the paper's) and at the larger batches the chapter uses at high noise, on
synthetic inputs gathered by index from an in-memory tensor as the training loop does.
Each configuration runs twice, interleaved, and keeps its best, so that all see the same
machine. Writes ``bench/results/massive_noise.json``; run it alone.

    python bench/massive_noise.py [--steps 40]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nlutils import models, train

RESULTS = Path(__file__).with_name("results") / "massive_noise.json"
CONV = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
MLPS = ["perceptron", "mlp1", "mlp2", "mlp4"]


def throughput(name: str, batch: int, precision: str = "fp32", channels_last: bool = False,
               steps: int = 40, warmup: int = 5) -> float:
    """Training examples per second of ``name`` at ``batch``."""
    net = models.build(name, (1, 28, 28), 10, seed=0)
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(8 * batch, 1, 28, 28, generator=g)
    labels = torch.randint(0, 10, (8 * batch,), generator=g)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = train.make_optimizer("adadelta", net.parameters(), 0.1, 0.0)

    def step(i):
        rows = torch.randint(0, len(pool), (batch,), generator=g)
        xb = pool.index_select(0, rows)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with train.autocast(precision):
            out = net(xb)
        loss = F.cross_entropy(out.float(), labels.index_select(0, rows))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(warmup):
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return batch * steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 1024])
    args = ap.parse_args()
    configs = [("conv4", b, p, cl) for b in args.batches for p, cl in CONV]
    configs += [(m, b, "fp32", False) for b in args.batches for m in MLPS]
    best: dict = {}
    for _ in range(2):
        for name, b, p, cl in configs:
            steps = args.steps if name == "conv4" else 10 * args.steps
            v = throughput(name, b, p, cl, steps=steps)
            key = f"{name}|{b}|{p}|{'channels_last' if cl else 'nchw'}"
            best[key] = max(v, best.get(key, 0.0))
    rows = [dict(zip(("model", "batch", "precision", "layout"), k.split("|")), examples_per_s=v)
            for k, v in best.items()]
    for r in rows:
        r["batch"] = int(r["batch"])
        print(f"{r['model']:10s} batch {r['batch']:5d} {r['precision']} {r['layout']:13s} "
              f"{r['examples_per_s']:10.0f} examples/s")
    speedup = {b: best[f"conv4|{b}|bf16|channels_last"] / best[f"conv4|{b}|fp32|nchw"] for b in args.batches}
    print("conv4, bf16 + channels_last over fp32 NCHW:", {b: round(v, 2) for b, v in speedup.items()})
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "conv4_speedup": {str(b): v for b, v in speedup.items()},
                                   "threads": torch.get_num_threads(), "torch": torch.__version__},
                                  indent=2) + "\n")


if __name__ == "__main__":
    main()
