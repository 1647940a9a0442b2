"""Cost of one L2RW training step on the blog's MLP (784-128-64-10, batch 128, trusted batch
128, Adam), measured side by side in one process:

* plain  — cross-entropy forward/backward + Adam step (the baseline);
* floor  — plain + one extra forward/backward on a trusted batch of 128 (what any exact
  method must at least add);
* fast   — nlutils.methods.reweight.MetaReweight (closed form with Adam's virtual step, Gram
  matrices with SGD's);
* higher — the blog's second-order pass through ``higher`` + the weighted backward;

and, on the fast CIFAR network (bf16, ``channels_last``, batch 256), plain, floor and L2RW
with the SGD virtual step (JVP path), under ``"cnn"``.

Prints ms per step and the ratios to plain, beside the ratio of the matrix products' multiply-adds
(:func:`multiply_adds`, the part of the cost no implementation can skip); writes
bench/results/l2rw_step.json.

    python bench/l2rw_step.py [--steps 300]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nlutils import models, train
from nlutils.methods import reweight


def multiply_adds(kind, sizes=(784, 128, 64, 10), b=128, bv=128):
    """Multiply-adds of the matrix products of one step on an MLP of ``sizes`` (batch ``b``,
    trusted batch ``bv``): what no implementation can skip, per kind. Per linear layer
    (``n`` in, ``o`` out): a forward is ``b·n·o``, a weight gradient ``b·n·o``, an input
    gradient (not for the first layer) ``b·n·o``.

    * plain: forward, weight and input gradients;
    * floor: plain + the same on the trusted batch;
    * fast_adam: floor + the products ``A Uᵀ`` (``b·n·o``): Adam's elementwise
      preconditioner ``u = g_v / d`` leaves no shortcut;
    * fast_sgd: noisy and trusted rows through one forward/backward to the layer outputs,
      the Gram matrices ``A A_vᵀ`` (``b·bv·n``) and ``Δ Δ_vᵀ`` (``b·bv·o``) in place of the
      trusted weight gradient and ``A Uᵀ``, the weighted update (``b·n·o``)."""
    layers = list(zip(sizes[:-1], sizes[1:]))
    fwd_bwd = lambda rows: sum(rows * n * o * (2 if i == 0 else 3) for i, (n, o) in enumerate(layers))
    if kind == "plain":
        return fwd_bwd(b)
    if kind == "floor":
        return fwd_bwd(b) + fwd_bwd(bv)
    if kind == "fast_adam":
        return fwd_bwd(b) + fwd_bwd(bv) + sum(b * n * o for n, o in layers)
    if kind == "fast_sgd":
        to_outputs = sum((b + bv) * n * o * (1 if i == 0 else 2) for i, (n, o) in enumerate(layers))
        return to_outputs + sum(b * bv * (n + o) + b * n * o for n, o in layers)
    return float("nan")  # higher: a second-order pass, not a product count


def batch_cycle(n, batch, g):
    """Batches of row indices, reshuffled every pass, for ever."""
    while True:
        yield from torch.randperm(n, generator=g).split(batch)


def timed(step, n, warmup=20):
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n * 1e3


def cnn_costs(steps: int) -> dict:
    """The same comparison on the fast CIFAR network in the book's training precision (bf16
    autocast, channels_last; the meta-gradient in float32): plain Nesterov-SGD steps, the
    floor (plus a trusted forward/backward in bf16, and in float32 as L2RW computes it), and
    L2RW with the SGD virtual step, whose inner products through the convolutions come from
    one forward-mode pass in float32 (``torch.func.jvp``): L2RW minus ``floor_fp32`` is
    that pass."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (1024,), generator=g)
    xv = torch.randn(256, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    yv = torch.randint(0, 10, (256,), generator=g)

    def make(kind):
        net = models.build("fastcnn", (3, 32, 32), 10, seed=0).to(memory_format=torch.channels_last)
        opt = train.make_optimizer("sgd", net.parameters(), 0.1, 0.85, 1e-3, nesterov=True)
        hook = reweight.MetaReweight(opt, xv, yv, inner="sgd", keep_history=False) if kind == "l2rw_sgd" else None
        batches = batch_cycle(1024, 256, g)

        def step():
            rows = next(batches)
            xb, yb = x.index_select(0, rows), y.index_select(0, rows)
            opt.zero_grad(set_to_none=True)
            if kind == "floor_fp32":  # the trusted pass as L2RW makes it: float32
                torch.autograd.grad(F.cross_entropy(net(xv[:128]), yv[:128]),
                                    [p for p in net.parameters() if p.requires_grad])
            with train.autocast("bf16"):
                if kind == "floor":
                    torch.autograd.grad(F.cross_entropy(net(xv[:128]).float(), yv[:128]),
                                        [p for p in net.parameters() if p.requires_grad])
                if hook is None:
                    F.cross_entropy(net(xb).float(), yb).backward()
                else:
                    hook.step_loss(net, xb, yb, rows)
            opt.step()
        return step

    out: dict = {}
    for _ in range(2):
        for kind in ("plain", "floor", "floor_fp32", "l2rw_sgd"):
            out[kind] = min(timed(make(kind), steps, warmup=3), out.get(kind, float("inf")))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cnn-steps", type=int, default=15, help="steps per CNN measurement (0: skip)")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (4096,), generator=g)
    xv, yv = torch.randn(500, 1, 28, 28, generator=g), torch.randint(0, 10, (500,), generator=g)
    results = {}
    load = os.getloadavg()[0]  # what else the machine ran when the measurement started

    def make(kind):
        net = models.build("mlp", (1, 28, 28), 10, seed=0)
        opt = torch.optim.Adam(net.parameters(), lr=6e-4, fused=True)
        batches = batch_cycle(4096, 128, g)
        hook = None
        if kind in ("fast_adam", "fast_sgd", "higher_adam"):
            inner = "sgd" if kind == "fast_sgd" else "adam"
            method = "higher" if kind == "higher_adam" else "auto"
            if kind == "higher_adam":  # higher differentiates a non-fused copy of Adam
                opt = torch.optim.Adam(net.parameters(), lr=6e-4)
            hook = reweight.MetaReweight(opt, xv, yv, inner=inner, method=method, keep_history=False)

        def step():
            rows = next(batches)
            xb, yb = x.index_select(0, rows), y.index_select(0, rows)
            opt.zero_grad(set_to_none=True)
            if kind == "floor":
                torch.autograd.grad(F.cross_entropy(net(xv[:128]), yv[:128]), list(net.parameters()))
            if hook is None:
                F.cross_entropy(net(xb), yb).backward()
            else:
                hook.step_loss(net, xb, yb, rows)
            opt.step()
        return step

    # interleave the kinds twice and keep each one's best, so all see the same machine
    kinds = ["plain", "floor", "fast_adam", "fast_sgd", "higher_adam"]
    for _ in range(2):
        for kind in kinds:
            ms = timed(make(kind), args.steps)
            results[kind] = min(ms, results.get(kind, float("inf")))
    macs = {k: multiply_adds(k) / multiply_adds("plain") for k in kinds}
    print(f"L2RW step cost, MLP 784-128-64-10, batch 128 ({torch.get_num_threads()} threads)")
    for kind in kinds:
        print(f"  {kind:12s} {results[kind]:6.2f} ms/step   {results[kind] / results['plain']:5.2f}x plain"
              + (f"   (matrix products {macs[kind]:4.2f}x plain)" if macs[kind] == macs[kind] else ""))
    out = {"ms_per_step": results,
           "ratio_to_plain": {k: v / results["plain"] for k, v in results.items()},
           "multiply_adds_ratio_to_plain": {k: v for k, v in macs.items() if v == v},
           "higher_over_fast_adam": results["higher_adam"] / results["fast_adam"],
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "load_average_1min_at_start": load}
    if args.cnn_steps:
        cnn = cnn_costs(args.cnn_steps)
        print("L2RW step cost, fastcnn (bf16, channels_last), batch 256, trusted batch 128")
        for kind, ms in cnn.items():
            print(f"  {kind:12s} {ms:7.1f} ms/step   {ms / cnn['plain']:5.2f}x plain")
        out["cnn"] = {"ms_per_step": cnn, "ratio_to_plain": {k: v / cnn["plain"] for k, v in cnn.items()}}
    res = Path(__file__).with_name("results")
    res.mkdir(exist_ok=True)
    (res / "l2rw_step.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
