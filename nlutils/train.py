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
of noisy rows predicted as their *noisy* label (``memorized``) and as their true class
(``noisy_true``), the fraction of correctly labelled rows predicted correctly
(``clean_correct``), test and validation
accuracy, and the seconds spent training (``seconds``) and evaluating (``eval_seconds``).
With a validation split and ``patience``, training stops early and the weights of the best
validation epoch are restored (a real copy of them, not a live ``state_dict``).

Speed on a CPU (see ``bench/cifar_cnn.py``): ``precision="bf16"`` runs the model's forward
pass under ``torch.autocast`` in bfloat16 (convolutions and matrix products; weights,
optimiser state and gradients stay float32) and ``channels_last`` stores convolution
activations as NHWC, which oneDNN's kernels prefer. The logits are cast back to float32
before any loss is computed, so every ``loss_fn`` hook sees float32; ``step_loss`` hooks run
inside the autocast region and keep their own sums (meta-gradients, Gram matrices, targets)
in float32. ``augment`` transforms whole batches as tensors with the loop's seeded
generator (:func:`augmentation`), ``label_smoothing`` applies to the plain cross-entropy,
and ``tta=True`` adds ``test_acc_tta`` (mean of the logits of the image and its mirror
image), reported beside the plain ``test_acc``, never instead of it.
"""
from __future__ import annotations

import copy
import os
import sys
import time
import contextlib
import re
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm  # a widget in Jupyter (ipywidgets), text elsewhere

OPTIMIZERS = ("sgd", "adam", "adadelta", "adagrad")
PRECISIONS = ("fp32", "bf16")


def make_optimizer(name, params, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0, nesterov: bool = False) -> torch.optim.Optimizer:
    """``name`` in :data:`OPTIMIZERS`, or a callable ``params -> Optimizer``.

    SGD, Adam and Adagrad use PyTorch's fused kernels (one kernel for all parameters,
    about 0.1 ms a step faster for a small MLP on this CPU); the update rule is the same.
    Parameters with ``requires_grad=False`` (frozen layers) are left out.
    """
    if callable(name):
        return name(params)
    params = [p for p in params if p.requires_grad]
    if nesterov and (name != "sgd" or momentum <= 0):
        raise ValueError("nesterov=True needs optimizer='sgd' with momentum > 0")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=nesterov, fused=True)
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


SCHEDULES = ("constant", "step", "exp", "triangle")


def lr_schedule(kind: str = "constant", epochs: int = 1, *, milestones=(), gamma: float = 0.1,
                warmup: float = 0.2, start: float = 0.2, end: float = 0.0) -> Callable[[int], float]:
    """The learning-rate factor after ``e`` finished epochs (for ``LambdaLR``; the first
    epoch trains at factor ``f(0)``), one formula per kind:

    * ``constant``: 1;
    * ``step``: ``gamma ** #{m in milestones : e >= round(m * epochs)}``, milestones given as
      fractions of training (``[0.5, 0.75]``: x0.1 at half and at three quarters);
    * ``exp``: ``gamma ** e``;
    * ``triangle``: linear from ``start`` to 1 over the first ``round(warmup * epochs)``
      epochs, then linear down to ``end`` at ``e = epochs`` (a one-cycle schedule).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule={kind!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs={epochs!r} must be an integer >= 1")
    if kind == "constant":
        return lambda e: 1.0
    if kind == "exp":
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma={gamma} must lie in (0, 1]")
        return lambda e: gamma ** e
    if kind == "step":
        if not 0 < gamma <= 1 or any(not 0 < m < 1 for m in milestones):
            raise ValueError(f"milestones={list(milestones)} must be fractions in (0, 1) and "
                             f"gamma={gamma} in (0, 1]")
        at = [round(m * epochs) for m in milestones]
        return lambda e: gamma ** sum(e >= a for a in at)
    if not 0 <= warmup < 1 or not 0 <= start <= 1 or not 0 <= end <= 1:
        raise ValueError(f"warmup={warmup} must lie in [0, 1), start={start} and end={end} in [0, 1]")
    w = round(warmup * epochs)

    def triangle(e):
        if e < w:
            return start + (1 - start) * e / w
        return end + (1 - end) * max(0.0, 1 - (e - w) / max(epochs - w, 1))
    return triangle


def autocast(precision: str = "fp32", device="cpu"):
    """The context for a forward pass at ``precision`` (``fp32``: no autocast; ``bf16``:
    ``torch.autocast`` in bfloat16 on the CPU or CUDA)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def uses_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _layout(xb: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and xb.ndim == 4:
        return xb.contiguous(memory_format=torch.channels_last)
    return xb.contiguous()


def _upcast(z: torch.Tensor) -> torch.Tensor:
    """Autocast output (bf16/fp16) to float32; float32 and float64 (the canary) unchanged."""
    return z.float() if z.dtype in (torch.bfloat16, torch.float16) else z


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, rows: torch.Tensor | None = None,
            batch_size: int = 4096, device="cpu", precision: str = "fp32",
            channels_last: bool = False, tta: bool = False, mirror: bool = False) -> torch.Tensor:
    """Logits (float32; float64 for a float64 model) of ``model`` on ``x[rows]`` (all of ``x`` by default), in eval mode
    and large batches; returned on the CPU. ``mirror=True``: the logits of the horizontal
    mirror images (flipped batch by batch, ``x`` is not copied); ``tta=True``: the mean of
    the logits of each image and its mirror image (flip test-time augmentation)."""
    was_training = model.training
    model.eval()
    n = len(x) if rows is None else len(rows)
    out = []
    for s in range(0, n, batch_size):
        xb = x[s:s + batch_size] if rows is None else x.index_select(0, rows[s:s + batch_size])
        xb = _layout((xb.flip(3) if mirror else xb).to(device), channels_last)
        with autocast(precision, device):
            z = _upcast(model(xb))
            if tta:
                z = (z + _upcast(model(_layout(xb.flip(3), channels_last)))) / 2
        out.append(z.cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def accuracy(model, x, y, rows=None, batch_size: int = 4096, device="cpu", **kw) -> float:
    """Accuracy in percent of ``model`` on ``(x[rows], y)``; ``kw`` go to :func:`predict`."""
    pred = predict(model, x, rows, batch_size, device, **kw).argmax(1)
    return 100.0 * float((pred == y).double().mean())


def augmentation(spec: str | Callable | None) -> Callable | None:
    """A batch augmentation ``(xb, generator) -> xb`` from a name:

    * ``"none"`` / ``None``: no augmentation;
    * ``"flip"``: horizontal flip with p = 1/2;
    * ``"crop<p>"``: pad by ``p`` pixels (zeros) and crop back at a random offset;
    * ``"crop<p>+flip"``: both (``"crop4+flip"`` is the standard CIFAR augmentation);
    * ``"translate<p>+flip"`` (or ``"translate<p>"``): the same with reflection padding
      (airbench's translate).

    A callable is returned as it is.
    """
    if spec is None or callable(spec):
        return spec
    if spec == "none":
        return None
    m = re.fullmatch(r"(?:(crop|translate)(\d+))?(\+?flip)?", str(spec))
    if not m or spec == "" or (m.group(1) and m.group(3) and not m.group(3).startswith("+")) \
            or (not m.group(1) and m.group(3) != "flip"):
        raise ValueError(f"augment={spec!r} is not an augmentation; use 'none', 'flip', "
                         f"'crop4', 'crop4+flip' or 'translate2+flip'")
    pad = int(m.group(2) or 0)
    flip = m.group(3) is not None
    mode = "reflect" if m.group(1) == "translate" else "constant"

    def aug(xb, generator):
        return random_crop_flip(xb, generator, pad=pad, flip=flip, mode=mode)
    aug.__name__ = aug.__qualname__ = f"augment_{spec}"
    return aug


def random_crop_flip(xb: torch.Tensor, generator: torch.Generator, pad: int = 4,
                     flip: bool = True, mode: str = "constant") -> torch.Tensor:
    """The standard CIFAR augmentation (pad-and-crop by up to ``pad`` pixels, horizontal
    flip with p = 1/2), for a whole batch at once: one gather, no per-image Python. The
    padding is zeros (``mode="constant"``) or a reflection (``"reflect"``)."""
    n, _, h, w = xb.shape
    if pad == 0 and not flip:
        return xb
    padded = F.pad(xb, (pad, pad, pad, pad), mode=mode) if pad else xb
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))           # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))           # (n, w)
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(mirror.view(n, 1), cols.flip(1), cols)
    out = padded[torch.arange(n).view(n, 1, 1), :, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2)  # NHWC in memory (channels_last); the loop lays it out


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
        nesterov: bool = False,
        lr_schedule: Callable[[float], float] | None = None,
        schedule_per_step: bool = False,
        weights: torch.Tensor | None = None,
        loss_fn: Callable | None = None,
        step_loss: Callable | None = None,
        augment: Callable | str | None = None,
        label_smoothing: float = 0.0,
        precision: str = "fp32",
        channels_last: bool | None = None,
        tta: bool = False,
        freeze: dict[str, int] | None = None,
        test: tuple[torch.Tensor, torch.Tensor] | None = None,
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
        patience: int | None = None,
        on_epoch_end: Callable | None = None,
        track_train: bool | int = True,
        seed: int = 0, device="cpu", progress: bool | None = None,
        eval_batch_size: int = 4096, desc: str = "train") -> pd.DataFrame:
    """Train ``model`` in place on rows ``(index[r], y[r])`` of image tensor ``x``.

    Returns the per-epoch history as a DataFrame; with a validation split,
    ``history.attrs`` holds ``best_epoch`` and ``best_val_acc``. ``steps_per_epoch`` makes
    an "epoch" a fixed number of steps (an evaluation period) instead of one pass over the
    rows: for very large row sets such as Rolnick's alpha copies.
    ``on_epoch_end(epoch, model, record)`` may add columns to ``record``; returning ``True``
    stops training after that epoch.
    ``precision`` (``fp32`` | ``bf16``), ``channels_last`` (``None``: on for networks with
    convolutions), ``augment`` (a name for :func:`augmentation` or a callable),
    ``label_smoothing`` (plain cross-entropy only) and ``tta`` are described in the module
    docstring. ``track_train``: the per-epoch training-set columns (``train_acc``,
    ``memorized``, ...) over every row (``True``), none (``False``), or a fixed random sample
    of that many rows (an estimate: a share measured on m rows of the sample has a standard
    error of at most 50/sqrt(m) points, e.g. 0.8 for the ~4,000 wrong-label rows of a
    10,000-row sample at 40% noise; the sample does not depend on the seed and does not
    touch the training stream). ``freeze={"whiten.bias": 3}`` stops training the parameters whose name starts
    with a key after that many epochs (progressive freezing: airbench trains its whitening
    bias for 3 epochs; frozen early layers also skip their share of the backward pass).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 1)")
    if label_smoothing and (loss_fn is not None or step_loss is not None):
        raise ValueError("label_smoothing applies to the plain cross-entropy; a loss_fn or "
                         "step_loss hook defines its own loss")
    augment = augmentation(augment)
    freeze = dict(freeze or {})
    names = [n for n, _ in model.named_parameters()]
    for prefix, after in freeze.items():
        if not any(n.startswith(prefix) for n in names):
            raise ValueError(f"freeze: no parameter of the model starts with {prefix!r}")
        if not isinstance(after, int) or after < 0:
            raise ValueError(f"freeze[{prefix!r}]={after!r} must be an integer >= 0 (epochs)")
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
    if channels_last is None:
        channels_last = x.ndim == 4 and uses_conv(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    ev = dict(precision=precision, channels_last=channels_last)  # evaluation as training
    opt = make_optimizer(optimizer, model.parameters(), lr, momentum, weight_decay, nesterov)
    sched = None
    if lr_schedule is not None:
        if schedule_per_step:  # the factor at fractional epochs: step s of an epoch of m steps
            m = steps_per_epoch or -(-n // batch_size)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_schedule(s / m))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule)
    if isinstance(track_train, bool) or track_train is None:
        track = None  # every row (True) or none (False)
    elif isinstance(track_train, int) and track_train > 0:
        # a fixed sample of rows, from its own generator: the training stream is unchanged
        track = None if track_train >= n else torch.randperm(
            n, generator=torch.Generator().manual_seed(0))[:track_train].sort().values
    else:
        raise ValueError(f"track_train={track_train!r} must be True, False or a number of rows > 0")
    ty = y if track is None else y[track]
    ty_true = None if y_true is None else (y_true if track is None else y_true[track])
    noisy_rows = None if ty_true is None else (ty != ty_true)
    # images needed for the training-set evaluation (unique ones when rows repeat images)
    if track_train:
        uimg, inv = torch.unique(index if track is None else index[track], return_inverse=True)
    history, best, best_state = [], -1.0, None
    since_best = 0
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not progress_enabled(progress),
               leave=False, file=sys.stderr)
    stream = _batches(n, batch_size, gen, steps_per_epoch)
    for epoch in bar:
        for prefix, after in freeze.items():
            if epoch == after + 1:
                for n, p in model.named_parameters():
                    if n.startswith(prefix):
                        p.requires_grad_(False)
        model.train()
        epoch_lr = opt.param_groups[0]["lr"]  # the learning rate this epoch trains with
        t0 = time.perf_counter()
        losses, sizes = [], []
        for rows in next(stream):
            # index_select is ~2.5x faster than x[rows] for a contiguous tensor on the CPU
            xb = x.index_select(0, rows if identity else index.index_select(0, rows))
            if augment is not None:
                xb = augment(xb, gen)
            xb, yb = _layout(xb.to(device), channels_last), y.index_select(0, rows).to(device)
            opt.zero_grad(set_to_none=True)
            if step_loss is not None:
                with autocast(precision, device):
                    loss = step_loss(model, xb, yb, rows)
            else:
                with autocast(precision, device):
                    logits = model(xb)
                if logits.dtype == torch.bfloat16:
                    logits = logits.float()  # every loss in float32
                if loss_fn is None and weights is None:
                    loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
                else:
                    per = (loss_fn(logits, yb, rows) if loss_fn is not None
                           else F.cross_entropy(logits, yb, reduction="none",
                                                label_smoothing=label_smoothing))
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
            if sched is not None and schedule_per_step:
                sched.step()
        if sched is not None and not schedule_per_step:
            sched.step()
        mean_loss = (float(torch.stack(losses) @ torch.tensor(
            sizes, dtype=losses[0].dtype, device=losses[0].device)) / sum(sizes)
            if losses else float("nan"))
        rec = {"epoch": epoch, "loss": mean_loss,
               "lr": epoch_lr, "seconds": time.perf_counter() - t0}
        t1 = time.perf_counter()
        if track_train:
            pred = predict(model, x, uimg, eval_batch_size, device, **ev).argmax(1)[inv]
            rec["train_acc"] = 100.0 * float((pred == ty).double().mean())
            if ty_true is not None:
                rec["train_acc_true"] = 100.0 * float((pred == ty_true).double().mean())
                k = int(noisy_rows.sum())
                rec["memorized"] = (100.0 * float((pred[noisy_rows] == ty[noisy_rows]).double().sum()) / k
                                    if k else float("nan"))
                # the memorisation picture: wrong-label rows predicted as their true class
                # (early learning) and clean rows predicted correctly
                rec["noisy_true"] = (100.0 * float((pred[noisy_rows] == ty_true[noisy_rows]).double().sum()) / k
                                     if k else float("nan"))
                c = len(ty) - k
                rec["clean_correct"] = (100.0 * float((pred[~noisy_rows] == ty[~noisy_rows]).double().sum()) / c
                                        if c else float("nan"))
        if test is not None:
            logits = predict(model, test[0], None, eval_batch_size, device, **ev, tta=False)
            rec["test_acc"] = 100.0 * float((logits.argmax(1) == test[1]).double().mean())
            if tta:
                logits = (logits + predict(model, test[0], None, eval_batch_size, device, **ev,
                                           mirror=True)) / 2
                rec["test_acc_tta"] = 100.0 * float((logits.argmax(1) == test[1]).double().mean())
        if val is not None:
            rec["val_acc"] = accuracy(model, val[0], val[1], None, eval_batch_size, device, **ev)
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
