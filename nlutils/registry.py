"""Every method the book runs, behind one contract; one runner; one canary per code path.

The method modules (:mod:`elr`, :mod:`elr_plus`, :mod:`reweight`, :mod:`gradsim`,
:mod:`correction`, :mod:`robust_losses`) stay copyable alone and import nothing from here.
This module is the experiment layer's adapter: for a method name it says

* **how it trains**: which rows and labels, and which :func:`train.fit` hook (``loss_fn``,
  ``step_loss``, ``weights``, or a different optimiser);
* **its noisiness score**: one number per training row, higher = more likely wrong
  (``arrays["score"]``; absent for the oracle), and the final predictions on the training
  rows (``arrays["pred"]``; for ELR and ELR+ also ``arrays["target_argmax"]``; for ``ce``
  the softmax outputs ``arrays["probs"]``, from which :func:`correction.estimate_T` reads
  T̂);
* **its history**: the fit history plus, for reweighting methods, per-epoch weight
  statistics (``w_clean_share``, ``w_noisy_zero``, ``w_clean_zero``, ``w_noisy_top10``,
  ``w_noisy_bottom10``: :func:`weight_stats`)
  and the per-row mean weight (``arrays["weight"]``), both from the hooks' one record shape
  ``(rows, weights, step)``.

:func:`run` builds the model, trains with the recipe and returns ``(metrics, history,
arrays)`` for :class:`nlutils.runs.RunStore`. Metrics always include ``acc_last`` (test
accuracy after the last epoch), ``acc_noisyval`` (test accuracy at the epoch with the best
accuracy on the noisy validation split, when the problem has one), ``acc_besttest`` (the
best test epoch: the optimistic protocol of leaderboards, never used to choose anything)
and ``memorized_final`` (percent of wrongly labelled rows predicted as their wrong label).

:func:`canary` runs the same code path (method, model family, recipe: precision,
augmentation, smoothing, schedule) on 64 synthetic images for two steps, once in float64
(the values) and once at the recipe's precision under :class:`PrecisionTrace` (which
functions compute in bf16): what a run record's freshness is checked against (see
:mod:`nlutils.runs`).

=====================  =====================================================================
method                 trains / scores
=====================  =====================================================================
``ce``                 cross-entropy on the noisy rows (``with_trusted``: and the trusted
                       rows with their clean labels) / ``1 - p_y``
``finetune``           ``ce`` with the trusted rows, then ``finetune_epochs`` on the trusted
                       rows alone (fresh optimiser, constant rate ``finetune_lr``, default the
                       recipe's, epochs as long as ce's)
                       / ``1 - p_y``
``oracle``             cross-entropy on the rows whose label is right / no score
``trusted_only``       cross-entropy on the trusted rows, as many steps as ``ce`` / ``1 - p_y``
``elr``                :class:`elr.ELRLoss` (``lam``, ``beta``) / ``1 - t_y`` (target)
``elr_plus``           :class:`elr_plus.ELRPlus` / ``1 - mean target_y``
``forward``,           :class:`correction.ForwardCorrection` / ``BackwardCorrection`` with
``backward``           ``params["T"]`` (the true or an estimated T; backward: ``nonneg``, the
                       max-operator correction) / posterior of a wrong label
``bootstrap_soft``,    :mod:`robust_losses` / ``1 - p_y``
``bootstrap_hard``,
``unhinged``,
``sigmoid``, ``savage``
``l2rw``               :class:`reweight.MetaReweight` on the trusted rows (``inner``: sgd or
                       adam) / minus the mean weight of the row
``gradsim``            :class:`gradsim.GradSimReweight` (``a``, ``k``, ``layers``) / minus the
                       mean weight of the row
``cleanlab_retrain``   ``folds``-fold cross-validated CE probabilities, cleanlab's
                       ``find_label_issues``, the flagged rows dropped, CE retrained
                       (:func:`cross_val_probs`) / 1 - cleanlab's self-confidence quality
=====================  =====================================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from . import data, models, noise, setting as setting_lib, train
from .methods import correction, detection, elr, elr_plus, gradsim, reweight, robust_losses
from .recipe import Recipe
from .setting import Problem, Setting


@dataclass(frozen=True)
class Method:
    name: str
    paper: str
    uses_trusted: bool = False   # needs clean examples (trusted rows)
    uses_mask: bool = False      # needs to know which labels are wrong (a reference)
    defaults: tuple = ()         # (name, value) pairs of its parameters


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("ce", "cross-entropy", defaults=(("with_trusted", False), ("stop_rule", "recipe"),
                                            ("warm_start", ()))),
    Method("finetune", "cross-entropy, then fine-tuning on the trusted rows", uses_trusted=True,
           defaults=(("with_trusted", True), ("finetune_epochs", 10), ("finetune_lr", None))),
    Method("oracle", "cross-entropy on the correctly labelled rows", uses_mask=True),
    Method("trusted_only", "cross-entropy on the trusted rows", uses_trusted=True),
    Method("elr", "Liu et al. 2020", defaults=(("lam", 3.0), ("beta", 0.7))),
    Method("elr_plus", "Liu et al. 2020", defaults=(("lam", 3.0), ("beta", 0.7),
                                                    ("mixup_alpha", 1.0), ("ema_decay", 0.997))),
    Method("forward", "Patrini et al. 2017", defaults=(("T", None),)),
    Method("backward", "Patrini et al. 2017", defaults=(("T", None), ("nonneg", False))),
    Method("bootstrap_soft", "Reed et al. 2014"), Method("bootstrap_hard", "Reed et al. 2014"),
    Method("unhinged", "van Rooyen et al. 2015"), Method("sigmoid", "Ghosh et al. 2015"),
    Method("savage", "Masnadi-Shirazi & Vasconcelos 2009"),
    Method("l2rw", "Ren et al. 2018", uses_trusted=True,
           defaults=(("inner", "sgd"), ("trusted_batch", 128), ("higher_eps", False),
                     ("meta_method", "auto"))),
    Method("cleanlab_retrain", "Northcutt et al. 2021 (cleanlab)", defaults=(("folds", 4),)),
    Method("gradsim", "Wei 2020", defaults=(("a", 4.0), ("k", 4), ("layers", "last"),
                                            ("weighting", "similarity"), ("fraction", 0.2),
                                            ("within_class", False))),
]}

LOSSES = {"bootstrap_soft": robust_losses.bootstrap_soft, "bootstrap_hard": robust_losses.bootstrap_hard,
          "unhinged": robust_losses.unhinged, "sigmoid": robust_losses.sigmoid,
          "savage": robust_losses.savage}


def method_params(name: str, params: dict | None = None) -> dict:
    """The method's parameters: its defaults overridden by ``params`` (unknown names raise)."""
    if name not in METHODS:
        raise ValueError(f"method={name!r} is unknown; choose one of {', '.join(METHODS)}")
    defaults = dict(METHODS[name].defaults)
    unknown = set(params or {}) - set(defaults)
    if unknown:
        raise ValueError(f"method {name!r} takes {sorted(defaults) or 'no parameters'}, "
                         f"not {sorted(unknown)}")
    out = {**defaults, **(params or {})}
    if name in ("forward", "backward") and out["T"] is None:
        raise ValueError(f"method {name!r} needs params['T'] (a K x K transition matrix)")
    return out


def params_key(name: str, params: dict | None) -> dict:
    """The parameters that differ from the method's defaults: what identifies them in a run
    record's key (a new parameter whose default keeps the old behaviour changes no key)."""
    defaults = dict(METHODS[name].defaults)
    return {k: v for k, v in method_params(name, params).items() if k not in defaults or defaults[k] != v}


def weight_stats(rows, w, step, is_noisy) -> dict:
    """Per-epoch statistics of a reweighting hook's weights: the share of the weight mass on
    correctly labelled rows, the percent of wrongly / correctly labelled rows weighted 0,
    and, per batch, how many wrongly labelled rows are among the 10 highest and the 10
    lowest weights (mean over the epoch's batches; the thesis' ranking diagnostic)."""
    if not len(rows):
        return {}
    noisy = is_noisy[rows]
    total = float(w.sum())
    top, bottom = [], []
    for s in torch.unique(step).tolist():
        at = step == s
        order = noisy[at][torch.argsort(w[at], descending=True, stable=True)]
        top.append(float(order[:10].sum()))
        bottom.append(float(order[-10:].sum()))
    nan = float("nan")
    return {"w_clean_share": 100 * float(w[~noisy].sum()) / total if total > 0 else nan,
            "w_noisy_zero": 100 * float((w[noisy] == 0).double().mean()) if noisy.any() else nan,
            "w_clean_zero": 100 * float((w[~noisy] == 0).double().mean()) if (~noisy).any() else nan,
            "w_noisy_top10": sum(top) / len(top), "w_noisy_bottom10": sum(bottom) / len(bottom)}


def build_model(model: str, problem: Problem, seed: int, model_args: dict | None = None):
    net = models.build(model, problem.ds.input_shape, problem.num_classes, seed=seed,
                       **(model_args or {}))
    if isinstance(net, models.FastCNN):  # whitening from training images, never labels
        rows = problem.train[:5000]
        models.init_whitening(net, problem.ds.x_train.index_select(0, rows))
    return net


def run(problem: Problem, method: str, *, model: str, recipe: Recipe, seed: int,
        params: dict | None = None, model_args: dict | None = None, device="cpu",
        progress: bool | None = None, track_train: bool | int = True, keep: dict | None = None):
    """Train ``method`` on ``problem``; returns ``(metrics, history, arrays)``. ``keep``: a
    dict that receives the trained network under ``"model"`` (the canary reads it)."""
    prm = method_params(method, params)
    keep = {} if keep is None else keep
    if problem.image is not None:
        return _run_copies(problem, method, prm, model=model, recipe=recipe, seed=seed,
                           model_args=model_args, device=device, progress=progress, keep=keep)
    if prm.get("stop_rule", "recipe") != "recipe":
        raise ValueError("stop_rule='blog' is the massive-noise blog's rule, for alpha settings only")
    if recipe.label_smoothing and method not in ("ce", "oracle", "trusted_only", "finetune", "cleanlab_retrain"):
        raise ValueError(f"method {method!r} defines its own loss: use a recipe with "
                         f"label_smoothing=0 (it is {recipe.label_smoothing})")
    x = problem.ds.x_train
    y_given = problem.labels.noisy
    rows = problem.train
    net = None if method == "elr_plus" else build_model(model, problem, seed, model_args)
    fit_kw = dict(recipe.fit_kwargs(), seed=seed, device=device, progress=progress,
                  desc=f"{method} {problem.setting.name} seed={seed}")
    labels = y_given[rows]
    if method in ("ce", "finetune") and prm["with_trusted"]:  # the trusted rows, clean labels
        if not len(problem.trusted):
            raise ValueError(f"{method} with_trusted needs trusted rows (trusted_per_class > 0)")
        rows = torch.cat([problem.trusted, problem.train])
        labels = torch.cat([problem.labels.clean[problem.trusted], y_given[problem.train]])
    hook: dict = {}
    weight_log: list = []
    after: Callable | None = None
    cv = None
    if method == "oracle":
        rows = rows[~problem.labels.is_noisy[rows]]
        labels = y_given[rows]
    elif method == "cleanlab_retrain":  # out-of-sample probabilities, confident learning, then CE
        cv = cross_val_probs(problem, model, recipe, seed, prm["folds"], model_args, device, progress)
        clean = ~cv["issues"]
        rows, labels = rows[clean], labels[clean]
    elif method == "trusted_only":
        if not len(problem.trusted):
            raise ValueError("trusted_only needs trusted rows (trusted_per_class > 0)")
        steps = -(-len(problem.train) // recipe.batch_size)
        rows = problem.trusted
        labels = problem.labels.clean[rows]
        fit_kw.update(steps_per_epoch=steps, batch_size=min(recipe.batch_size, len(rows)))
    elif method == "elr":
        loss = elr.ELRLoss(len(rows), problem.num_classes, lam=prm["lam"], beta=prm["beta"])
        hook["loss_fn"] = loss
        after = lambda probs: 1 - (loss.target / loss.target.sum(1, keepdim=True).clamp_min(1e-12)) \
            .gather(1, labels.view(-1, 1)).squeeze(1)
    elif method == "elr_plus":
        net = elr_plus.ELRPlus(lambda: build_model(model, problem, seed, model_args), len(rows),
                               problem.num_classes, lam=prm["lam"], beta=prm["beta"],
                               mixup_alpha=prm["mixup_alpha"], ema_decay=prm["ema_decay"], seed=seed)
        hook["step_loss"] = net.step_loss
        # the recipe's freezing applies to both trained networks (named nets.0.*, nets.1.*)
        fit_kw["freeze"] = {f"nets.{i}.{k}": v for k, v in fit_kw["freeze"].items() for i in (0, 1)}
        after = lambda probs: 1 - (net.target.mean(0) / net.target.mean(0).sum(1, keepdim=True)
                               .clamp_min(1e-12)).gather(1, labels.view(-1, 1)).squeeze(1)
    elif method in ("forward", "backward"):
        T = torch.as_tensor(prm["T"], dtype=torch.float64)
        hook["loss_fn"] = (correction.ForwardCorrection(T) if method == "forward"
                           else correction.BackwardCorrection(T, nonneg=prm["nonneg"]))
        after = lambda probs: detection.posterior_noisy(probs, labels, T)
    elif method in LOSSES:
        hook["loss_fn"] = LOSSES[method]
    elif method == "l2rw":
        if not len(problem.trusted):
            raise ValueError("l2rw needs trusted rows (trusted_per_class > 0)")
        if prm["meta_method"] == "higher" and recipe.optimizer == "adam":
            # higher differentiates a copy of a plain (non-fused) Adam
            opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        else:
            opt = train.make_optimizer(recipe.optimizer, net.parameters(), recipe.lr,
                                       recipe.momentum, recipe.weight_decay, recipe.nesterov)
        trusted = problem.trusted
        hook_obj = reweight.MetaReweight(opt, x.index_select(0, trusted), problem.labels.clean[trusted],
                                         inner=prm["inner"], trusted_batch=prm["trusted_batch"],
                                         seed=seed, method=prm["meta_method"],
                                         higher_eps=prm["higher_eps"])
        hook.update(optimizer=lambda p: opt, step_loss=hook_obj.step_loss)
    elif method == "gradsim":
        hook_obj = gradsim.GradSimReweight(a=prm["a"], k=prm["k"], layers=prm["layers"], seed=seed,
                                           weighting=prm["weighting"], fraction=prm["fraction"],
                                           within_class=prm["within_class"])
        hook["step_loss"] = hook_obj
    if method in ("l2rw", "gradsim"):
        is_noisy = problem.labels.is_noisy[rows]

        def log_weights(epoch, m, record):  # one shape for both hooks: (rows, weights, step)
            r, w, step = hook_obj.pop_history()
            weight_log.append((r, w))
            record.update(weight_stats(r, w, step, is_noisy))
        fit_kw["on_epoch_end"] = log_weights
    fit_kw.update(hook)
    # evaluation as the loop trains: same precision, same layout
    ev = dict(device=device, precision=recipe.precision,
              channels_last=x.ndim == 4 and train.uses_conv(net))
    val = None
    if len(problem.val):
        val = (x.index_select(0, problem.val), y_given[problem.val])
    history = train.fit(net, x, labels, index=rows, test=(problem.ds.x_test, problem.ds.y_test),
                        val=val, y_true=problem.labels.clean[rows] if track_train else None,
                        track_train=track_train, **fit_kw)
    if method == "finetune":  # then the trusted rows alone, a fresh optimiser, constant lr
        trusted = problem.trusted
        steps = -(-len(problem.train) // recipe.batch_size)  # an epoch: as many steps as ce's
        tune = train.fit(net, x, problem.labels.clean[trusted], index=trusted,
                         test=(problem.ds.x_test, problem.ds.y_test), val=val, track_train=False,
                         **dict(fit_kw, epochs=prm["finetune_epochs"], lr_schedule=None,
                                lr=prm["finetune_lr"] or recipe.lr,
                                steps_per_epoch=steps, batch_size=min(recipe.batch_size, len(trusted)),
                                desc=f"finetune seed={seed}"))
        history = pd.concat([history, tune.assign(epoch=tune["epoch"] + len(history))],
                            ignore_index=True)
    # with a validation split, fit leaves the weights of the best noisy-validation epoch in
    # the model: the scores below are those of the model the noisy-validation protocol selects
    metrics = _protocol_metrics(history, recipe)
    metrics["seconds"] = float(history["seconds"].sum())
    if cv is not None:  # the folds' training is part of the method's cost
        metrics["cv_seconds"] = cv["seconds"]
        metrics["seconds"] += cv["seconds"]
        metrics["flagged"] = int(cv["issues"].sum())
    arrays = {}
    train_rows, train_labels = problem.train, y_given[problem.train]
    # one pass over the training rows: the final predictions (the "prediction ≠ label"
    # detector) and the probabilities the scores are made of
    logits = train.predict(net, x, train_rows, **ev)
    arrays["pred"] = logits.argmax(1).to(torch.int16)
    probs = logits.softmax(1).double()
    if method in ("elr", "elr_plus"):  # the README's detector: the target's argmax ≠ label
        target = loss.target if method == "elr" else net.target.mean(0)
        arrays["target_argmax"] = target.argmax(1).to(torch.int16)
    if cv is not None:
        arrays["score"] = cv["score"]
        arrays["issues"] = cv["issues"]
    elif method == "ce":  # p(noisy label | x) on the training rows: the input of the T̂ estimator
        arrays["probs"] = probs.float()
    if method in ("ce", "trusted_only", "finetune") or method in LOSSES:
        arrays["score"] = 1 - probs.gather(1, train_labels.view(-1, 1)).squeeze(1)
    elif after is not None:
        arrays["score"] = after(probs)
    elif weight_log:  # rows are positions in problem.train (the rows fit was given)
        w = detection.mean_by_row([(r, v) for r, v in weight_log if len(r)], len(train_rows))
        arrays["weight"] = w
        arrays["score"] = -w.nan_to_num(0.0)
    keep["model"] = net
    return metrics, history, arrays


def _run_copies(problem: Problem, method: str, prm: dict, *, model, recipe, seed, model_args,
                device, progress, keep: dict):
    """Cross-entropy on a massive-noise problem (rows mapped to images, Rolnick et al.):
    validation on the *clean* held-out images, early stopping by the recipe's patience
    with the best weights restored; or (``stop_rule="blog"``) the blog's rule: full passes,
    stop at the first epoch from the fifth on whose validation accuracy does not beat the
    previous three, and keep the last weights. Metrics add ``steps`` and ``throughput``
    (training examples per second); no per-row arrays (millions of rows)."""
    if method != "ce":
        raise ValueError(f"method {method!r} does not run on massive-noise settings; use 'ce'")
    x = problem.ds.x_train
    net = build_model(model, problem, seed, model_args)
    val = (x.index_select(0, problem.val), problem.ds.y_train[problem.val]) if len(problem.val) else None
    if prm["stop_rule"] == "blog" and val is None:
        raise ValueError("stop_rule='blog' needs a validation split (val_fraction > 0)")
    if prm["warm_start"] and prm["stop_rule"] != "blog":
        raise ValueError("warm_start replays the blog's sweep: it needs stop_rule='blog'")
    ev = dict(device=device, precision=recipe.precision, channels_last=x.ndim == 4 and train.uses_conv(net))

    def one(p: Problem, r: Recipe):
        """One run of the procedure on ``net`` as it is (the blog's rule: fresh validation log)."""
        fit_kw = dict(r.fit_kwargs(), seed=seed, device=device, progress=progress,
                      desc=f"ce {p.setting.name} lr={r.lr:g} seed={seed}")
        v = val
        if prm["stop_rule"] == "blog":
            log: list = []

            def blog_rule(epoch, m, rec):
                rec["val_acc"] = train.accuracy(m, *val, **ev)
                log.append(rec["val_acc"])
                return epoch > 4 and rec["val_acc"] <= max(log[-4:-1])
            fit_kw.update(on_epoch_end=blog_rule, patience=None)
            v = None
        return train.fit(net, x, p.row_labels, index=p.image, test=(p.ds.x_test, p.ds.y_test),
                         val=v, track_train=False, **fit_kw)

    # The blog's sweep builds its networks once and trains the same object for every
    # (alpha, lr) in turn: ``warm_start`` replays those earlier runs on this network first
    # (same images, seed and splits; each with a fresh optimiser, as the blog's train() has).
    warm = [one(_sibling(problem, int(a)), recipe.replace(lr=float(lr))) for a, lr in prm["warm_start"]]
    h = one(problem, recipe)
    metrics = _protocol_metrics(h, recipe if prm["stop_rule"] == "recipe" else None)
    steps = len(h) * (recipe.steps_per_epoch or -(-len(problem.image) // recipe.batch_size))
    metrics.update(seconds=float(h["seconds"].sum()), steps=int(steps),
                   throughput=steps * recipe.batch_size / max(float(h["seconds"].sum()), 1e-9))
    if warm:  # what the earlier runs of the sweep cost and reached
        metrics.update(warm_seconds=float(sum(w["seconds"].sum() for w in warm)),
                       warm_test_acc=[float(w["test_acc"].iloc[-1]) for w in warm],
                       warm_epochs=[len(w) for w in warm])
    if "val_acc" in h:
        metrics["val_best"] = float(h["val_acc"].max())
    keep["model"] = net
    return metrics, h, {}


def _sibling(problem: Problem, alpha: int) -> Problem:
    """The same massive-noise problem (data, label kind, seed, clean and validation images)
    at another ``alpha``; a problem of no named data set (the canary's synthetic rows) is
    its own sibling."""
    s = problem.setting
    if s.data not in setting_lib.DATA:
        return problem
    kind = "alphashift" if s.noise == "massive_shift" else "alpha"
    return setting_lib.parse(f"{s.data}_{kind}{alpha}").build(problem.seed, **problem.options)


def cross_val_probs(problem: Problem, model: str, recipe: Recipe, seed: int, folds: int,
                    model_args: dict | None = None, device="cpu", progress: bool | None = None) -> dict:
    """cleanlab's recipe for its own algorithm: out-of-sample probabilities of the training
    rows by ``folds``-fold cross-validation of cross-entropy (same network and recipe, no
    evaluation), then ``find_label_issues`` (prune by noise rate) and the self-confidence
    label quality. Returns ``issues`` (bool per row of ``problem.train``), ``score``
    (1 - quality: higher = more suspicious), ``probs`` and the folds' training ``seconds``."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    rows = problem.train
    labels = problem.labels.noisy[rows]
    fold = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)) % folds
    probs = torch.zeros(len(rows), problem.num_classes, dtype=torch.float64)
    seconds = 0.0
    for f in range(folds):
        fit_rows, held = rows[fold != f], (fold == f).nonzero().flatten()
        net = build_model(model, problem, seed + 1000 * (f + 1), model_args)
        h = train.fit(net, problem.ds.x_train, problem.labels.noisy[fit_rows], index=fit_rows,
                      track_train=False, **dict(recipe.fit_kwargs(), seed=seed, device=device, progress=progress,
                                                desc=f"cleanlab fold {f + 1}/{folds} seed={seed}"))
        seconds += float(h["seconds"].sum())
        ev = dict(device=device, precision=recipe.precision,
                  channels_last=problem.ds.x_train.ndim == 4 and train.uses_conv(net))
        probs[held] = train.predict(net, problem.ds.x_train, rows[held], **ev).softmax(1).double()
    y, pp = labels.numpy(), probs.numpy()
    issues = torch.as_tensor(find_label_issues(y, pp, filter_by="prune_by_noise_rate"))
    quality = torch.as_tensor(get_label_quality_scores(y, pp, method="self_confidence"))
    return {"issues": issues, "score": 1 - quality, "probs": probs, "seconds": seconds}


def _protocol_metrics(h, recipe: Recipe | None = None) -> dict:
    out = {"acc_last": float(h["test_acc"].iloc[-1]),
           "acc_besttest": float(h["test_acc"].max()),
           "epochs_run": int(len(h))}
    if recipe is not None and recipe.patience is not None:  # which rule ended the run
        out["stopped_by"] = "patience" if len(h) < recipe.epochs else "budget"
    if "test_acc_tta" in h:
        out["acc_last_tta"] = float(h["test_acc_tta"].iloc[-1])
    if "val_acc" in h:
        best = int(h["val_acc"].to_numpy().argmax())  # first epoch with the best noisy-val accuracy
        out["acc_noisyval"] = float(h["test_acc"].iloc[best])
        out["noisyval_epoch"] = int(h["epoch"].iloc[best])
    if "memorized" in h:
        out["memorized_final"] = float(h["memorized"].iloc[-1])
    return out


# ----------------------------------------------------------------- canaries

# what a canary compares: continuous numbers only (a count such as an accuracy can flip with
# one last-bit difference; a loss or a probability moves by that difference and no more)
CANARY_COLUMNS = ("loss",)
CANARY_ARRAYS = ("score", "weight")
LOW_PRECISION = (torch.bfloat16, torch.float16)


def synthetic_problem(input_shape, num_classes: int = 10, n: int = 64, seed: int = 0) -> Problem:
    """64 random images of ``input_shape`` with 40% symmetric noise, 2 trusted and 1
    validation example per class... enough to walk every code path, nothing to learn.
    The images are made in the default dtype (float64 inside :func:`canary`'s values run)."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = input_shape
    x = torch.randn(n, c, h, w, generator=g)
    y = torch.arange(n) % num_classes
    ds = data.Dataset("synthetic", x, y, torch.randn(16, c, h, w, generator=g),
                      torch.arange(16) % num_classes, [str(i) for i in range(num_classes)])
    nl = noise.symmetric(y, 0.4, num_classes, seed=seed)
    trusted = torch.arange(num_classes)
    val = torch.arange(num_classes, 2 * num_classes)
    rows = torch.arange(2 * num_classes, n)
    return Problem(Setting("synthetic_sym40", "synthetic", "synthetic", "symmetric", 0.4), seed,
                   ds, nl, rows, trusted, val)


class PrecisionTrace(torch.overrides.TorchFunctionMode):
    """Which torch functions see or make a low-precision (bf16/fp16) tensor, and in which
    dtypes: ``counts[(function, input dtypes, output dtypes)]``. Only the calls the code makes
    itself are seen (a function's own inner calls are not), and dtypes follow autocast's op
    lists, not the processor's kernels: the same code gives the same trace on every CPU."""

    def __init__(self):
        super().__init__()
        self.counts: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves

        def dtypes(obj):
            return tuple(str(t.dtype).replace("torch.", "") for t in leaves(obj)
                         if isinstance(t, torch.Tensor) and t.is_floating_point())
        ins, outs = tuple(sorted(set(dtypes((args, kwargs))))), dtypes(out)
        if any(getattr(torch, d) in LOW_PRECISION for d in ins + outs):
            name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
            key = (name, ins, outs)
            self.counts[key] = self.counts.get(key, 0) + 1
        return out

    def digest(self) -> str:
        import hashlib
        text = "\n".join(f"{k[0]}({','.join(k[1])})->{','.join(k[2])} x{n}"
                         for k, n in sorted(self.counts.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


ADAM_META_RTOL = 1e-4
"""The canary tolerance of L2RW with an Adam virtual step (instead of
:data:`nlutils.runs.RTOL`). Its meta-gradient preconditions every parameter by
``1/(sqrt(v)+eps)``: up to ``1/eps`` where the gradients so far were near zero, so the
example weights lean on the least precise gradient components and amplify rounding. Measured
on the float64 canary of the fast CNN (crops + flips and none): weights moved by up to
8.4e-6 (losses 1.7e-7) between an Intel Xeon with AMX and an AMD EPYC, 3.9e-9 between
AVX-512 and AVX2 kernels on one machine; a tenfold Adam ε moves them far beyond it
(``tests/test_portable_records.py``)."""


def canary(method: str, *, model: str, recipe: Recipe, input_shape=(3, 32, 32),
           params: dict | None = None, model_args: dict | None = None, num_classes: int = 10,
           copies: bool = False):
    """What this exact code path computes, in a form that travels between processors: the
    recipe for 2 epochs of one batch of 32 rows on :func:`synthetic_problem` (schedule,
    augmentation, hooks, freezing, validation included), run twice.

    * ``values``: the run in **float64** (default dtype float64, no autocast): the two steps'
      losses, the trained network's logits on the 16 test images and the per-row arrays
      (scores, weights). Float64 leaves processors' summation orders ~1e-13 apart, far inside
      :data:`nlutils.runs.RTOL`, while any change of what the code computes (a loss, an
      initialisation, a schedule, an augmentation, a default) moves them by far more.
      L2RW with an Adam virtual step amplifies rounding: its canary carries the looser
      tolerance :data:`ADAM_META_RTOL` (``compute.rtol``).
    * ``trace``: the run at the recipe's own precision under :class:`PrecisionTrace`: which
      functions compute in bf16 and where float32 takes over (the precision rule, which a
      float64 run cannot show), as a digest. Processor-independent; no value is compared.

    ``copies``: the massive-noise path (every image twice, the copy with a random label).
    Run it through :func:`nlutils.runs.run_canary` (one thread, the global RNG forked)."""
    def one(r: Recipe):
        problem = synthetic_problem(input_shape, num_classes)
        if copies:
            g = torch.Generator().manual_seed(1)
            rows = problem.train
            problem.image = torch.cat([rows, rows])
            problem.row_labels = torch.cat([problem.labels.clean[rows],
                                            torch.randint(0, num_classes, (len(rows),), generator=g)])
            problem.train = torch.arange(len(problem.image))
        keep: dict = {}
        _, history, arrays = run(problem, method, model=model, recipe=r, seed=0, params=params,
                                 model_args=model_args, progress=False, keep=keep)
        return problem, history, arrays, keep["model"]

    def compute():
        r = recipe.replace(epochs=2, batch_size=32,
                           steps_per_epoch=None if recipe.steps_per_epoch is None else 1)
        before = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            problem, history, arrays, net = one(r.replace(precision="fp32"))
            values = {f"history.{c}": history[c].to_numpy() for c in CANARY_COLUMNS if c in history}
            values["test_logits"] = train.predict(net, problem.ds.x_test).double().numpy()
            values.update({k: torch.as_tensor(arrays[k]).double().numpy() for k in CANARY_ARRAYS
                           if k in arrays})
        finally:
            torch.set_default_dtype(before)
        trace = PrecisionTrace()
        with trace:
            one(r)
        return {"values": values, "trace": trace.digest()}
    if method == "l2rw" and (params or {}).get("inner", "sgd") == "adam":
        compute.rtol = ADAM_META_RTOL
    return compute
