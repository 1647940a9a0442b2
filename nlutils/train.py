"""One training loop for every chapter.

The data stay where :mod:`nlutils.data` put them, as one tensor of images ``x``. A training
set is a list of *rows*: row ``r`` shows image ``index[r]`` with label ``y[r]`` (by default
``index = arange(len(y))``). Subsets, trusted splits and Rolnick's alpha noisy copies are
all just other ``index``/``y`` pairs: no image is copied. Each epoch draws a permutation
of the rows from a seeded generator and batches by index.

A method changes what the loss sees through exactly one hook:

* ``weights`` — a per-row weight; the batch loss is ``Σ w_i ℓ_i / Σ w_i`` (so all-ones
  weights give plain cross-entropy, and zero weights drop rows, e.g. the oracle);
* ``loss_fn(logits, targets, rows)`` — a per-example (or scalar) loss replacing
  cross-entropy (ELR, loss correction, bootstrap, ...);
* ``step_loss(model, xb, yb, rows)`` — full control of the batch: return the scalar to
  back-propagate (meta-reweighting, gradient similarity); or fill the parameters'
  ``.grad`` yourself and return a detached loss (logged only) or ``None``.

Per epoch the loop records, in a pandas DataFrame: mean training loss, accuracy against the
given labels (``train_acc``) and against the true ones (``train_acc_true``), the fraction
of noisy rows predicted as their *noisy* label (``memorized``), test and validation
accuracy, and the seconds spent training (``seconds``) and evaluating (``eval_seconds``).
With a validation split and ``patience``, training stops early and the weights of the best
validation epoch are restored (a real copy of them, not a live ``state_dict``).
"""
from __future__ import annotations

import copy
import os
import sys
import time
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm  # a widget in Jupyter (ipywidgets), text elsewhere

OPTIMIZERS = ("sgd", "adam", "adadelta", "adagrad")


def make_optimizer(name, params, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``name`` in :data:`OPTIMIZERS`, or a callable ``params -> Optimizer``.

    SGD, Adam and Adagrad use PyTorch's fused kernels (one kernel for all parameters,
    about 0.1 ms a step faster for a small MLP on this CPU); the update rule is the same.
    """
    if callable(name):
        return name(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay, fused=True)
    raise ValueError(f"optimizer={name!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")


def progress_enabled(progress: bool | None) -> bool:
    """``None`` means: on, unless the environment sets ``NLUTILS_PROGRESS=0`` (the book
    build does, so executed chapters hold no progress-bar residue)."""
    if progress is None:
        return os.environ.get("NLUTILS_PROGRESS", "1") != "0"
    return bool(progress)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, rows: torch.Tensor | None = None,
            batch_size: int = 4096, device="cpu") -> torch.Tensor:
    """Logits of ``model`` on ``x[rows]`` (all of ``x`` by default), in eval mode and large
    batches; returned on the CPU."""
    was_training = model.training
    model.eval()
    n = len(x) if rows is None else len(rows)
    out = []
    for s in range(0, n, batch_size):
        xb = x[s:s + batch_size] if rows is None else x.index_select(0, rows[s:s + batch_size])
        out.append(model(xb.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def accuracy(model, x, y, rows=None, batch_size: int = 4096, device="cpu") -> float:
    """Accuracy in percent of ``model`` on ``(x[rows], y)``."""
    pred = predict(model, x, rows, batch_size, device).argmax(1)
    return 100.0 * float((pred == y).double().mean())


def random_crop_flip(xb: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The standard CIFAR augmentation (pad-and-crop by up to ``pad`` pixels, horizontal
    flip with p = 1/2), for a whole batch at once with zero padding."""
    n, _, h, w = xb.shape
    padded = F.pad(xb, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))           # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))           # (n, w)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    out = padded[torch.arange(n).view(n, 1, 1), :, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


def _batches(n: int, batch_size: int, gen: torch.Generator, steps_per_epoch: int | None):
    """Yields, per epoch, the list of row batches: one pass over a fresh permutation, or
    ``steps_per_epoch`` batches cut from a stream of permutations (a pass may then span
    several "epochs", which are evaluation periods)."""
    if steps_per_epoch is None:
        while True:
            yield torch.randperm(n, generator=gen).split(batch_size)
    perm, pos = torch.randperm(n, generator=gen), 0
    while True:
        out = []
        for _ in range(steps_per_epoch):
            if pos + batch_size > n:  # drop the ragged end of a pass, start a new one
                perm, pos = torch.randperm(n, generator=gen), 0
            out.append(perm[pos:pos + batch_size])
            pos += batch_size
        yield out


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
        epochs: int,
        index: torch.Tensor | None = None,
        y_true: torch.Tensor | None = None,
        batch_size: int = 128,
        steps_per_epoch: int | None = None,
        optimizer="adam", lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0,
        lr_schedule: Callable[[int], float] | None = None,
        weights: torch.Tensor | None = None,
        loss_fn: Callable | None = None,
        step_loss: Callable | None = None,
        augment: Callable | None = None,
        test: tuple[torch.Tensor, torch.Tensor] | None = None,
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
        patience: int | None = None,
        on_epoch_end: Callable | None = None,
        track_train: bool = True,
        seed: int = 0, device="cpu", progress: bool | None = None,
        eval_batch_size: int = 4096, desc: str = "train") -> pd.DataFrame:
    """Train ``model`` in place on rows ``(index[r], y[r])`` of image tensor ``x``.

    Returns the per-epoch history as a DataFrame; with a validation split,
    ``history.attrs`` holds ``best_epoch`` and ``best_val_acc``. ``steps_per_epoch`` makes
    an "epoch" a fixed number of steps (an evaluation period) instead of one pass over the
    rows: for very large row sets such as Rolnick's alpha copies.
    ``on_epoch_end(epoch, model, record)`` may add columns to ``record``; returning ``True``
    stops training after that epoch.
    """
    if epochs < 0:
        raise ValueError(f"epochs={epochs} must be >= 0")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if steps_per_epoch is not None and (steps_per_epoch < 1 or batch_size > len(y)):
        raise ValueError(f"steps_per_epoch={steps_per_epoch} must be >= 1, with batch_size "
                         f"<= the number of rows")
    y = torch.as_tensor(y, dtype=torch.long)
    index = torch.arange(len(y)) if index is None else torch.as_tensor(index, dtype=torch.long)
    if len(index) != len(y):
        raise ValueError(f"index has {len(index)} rows but y has {len(y)}")
    if weights is not None and len(weights) != len(y):
        raise ValueError(f"weights has {len(weights)} rows but y has {len(y)}")
    n = len(y)
    identity = torch.equal(index, torch.arange(n)) and len(x) == n
    device = torch.device(device)
    torch.manual_seed(seed)  # dropout and any other global-RNG use inside the model
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    opt = make_optimizer(optimizer, model.parameters(), lr, momentum, weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule) if lr_schedule else None
    noisy_rows = None if y_true is None else (y != y_true)
    # images needed for the training-set evaluation (unique ones when rows repeat images)
    if track_train:
        uimg, inv = torch.unique(index, return_inverse=True)
    history, best, best_state = [], -1.0, None
    since_best = 0
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not progress_enabled(progress),
               leave=False, file=sys.stderr)
    stream = _batches(n, batch_size, gen, steps_per_epoch)
    for epoch in bar:
        model.train()
        t0 = time.perf_counter()
        losses, sizes = [], []
        for rows in next(stream):
            # index_select is ~2.5x faster than x[rows] for a contiguous tensor on the CPU
            xb = x.index_select(0, rows if identity else index.index_select(0, rows))
            if augment is not None:
                xb = augment(xb, gen)
            xb, yb = xb.to(device), y.index_select(0, rows).to(device)
            opt.zero_grad(set_to_none=True)
            if step_loss is not None:
                loss = step_loss(model, xb, yb, rows)
            else:
                logits = model(xb)
                if loss_fn is None and weights is None:
                    loss = F.cross_entropy(logits, yb)
                else:
                    per = (loss_fn(logits, yb, rows) if loss_fn is not None
                           else F.cross_entropy(logits, yb, reduction="none"))
                    if weights is not None and per.ndim:
                        w = weights[rows].to(device)
                        loss = (w * per).sum() / w.sum().clamp_min(1e-12)
                    else:
                        loss = per.mean()
            if loss is not None:
                if loss.requires_grad:
                    loss.backward()
                losses.append(loss.detach())
                sizes.append(len(rows))
            opt.step()
        if sched is not None:
            sched.step()
        mean_loss = (float(torch.stack(losses) @ torch.tensor(
            sizes, dtype=losses[0].dtype, device=losses[0].device)) / sum(sizes)
            if losses else float("nan"))
        rec = {"epoch": epoch, "loss": mean_loss,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        t1 = time.perf_counter()
        if track_train:
            pred = predict(model, x, uimg, eval_batch_size, device).argmax(1)[inv]
            rec["train_acc"] = 100.0 * float((pred == y).double().mean())
            if y_true is not None:
                rec["train_acc_true"] = 100.0 * float((pred == y_true).double().mean())
                k = int(noisy_rows.sum())
                rec["memorized"] = (100.0 * float((pred[noisy_rows] == y[noisy_rows]).double().sum()) / k
                                    if k else float("nan"))
        if test is not None:
            rec["test_acc"] = accuracy(model, test[0], test[1], None, eval_batch_size, device)
        if val is not None:
            rec["val_acc"] = accuracy(model, val[0], val[1], None, eval_batch_size, device)
            if rec["val_acc"] > best:
                best, since_best = rec["val_acc"], 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
        rec["eval_seconds"] = time.perf_counter() - t1
        stop = bool(on_epoch_end(epoch, model, rec)) if on_epoch_end is not None else False
        history.append(rec)
        bar.set_postfix({k: round(v, 2) for k, v in rec.items()
                         if k in ("loss", "test_acc", "val_acc")})
        if stop or (patience is not None and val is not None and since_best >= patience):
            break
    bar.close()
    df = pd.DataFrame(history)
    if best_state is not None:
        model.load_state_dict(best_state)
        df.attrs["best_epoch"] = int(df.loc[df["val_acc"].idxmax(), "epoch"])
        df.attrs["best_val_acc"] = best
    return df
