"""One contract for every method: how it trains, its score, its history; canaries."""
import numpy as np
import pytest
import torch

from nlutils import noise, recipe, registry, runs, setting

SGD = recipe.Recipe(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=64, epochs=2)
PARAMS = {"forward": {"T": noise.symmetric_T(0.4, 10).tolist()},
          "backward": {"T": noise.symmetric_T(0.4, 10).tolist()}}


def _problem(digits):
    return setting.parse("digits_sym40").build(seed=0, trusted_per_class=5, val_fraction=0.1, ds=digits)


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_every_method_runs_and_scores_every_training_row(digits, method):
    p = _problem(digits)
    metrics, history, arrays = registry.run(p, method, model="mlp", recipe=SGD, seed=0,
                                            params=PARAMS.get(method), progress=False)
    for key in ("acc_last", "acc_besttest", "acc_noisyval", "memorized_final", "seconds"):
        assert key in metrics, key
        # no wrongly labelled row in what oracle / trusted_only / the fine-tuning phase train on
        assert np.isfinite(metrics[key]) or (method in ("oracle", "trusted_only", "finetune")
                                             and key == "memorized_final"), key
    assert metrics["acc_besttest"] >= metrics["acc_last"]
    assert len(history) == (2 + 10 if method == "finetune" else 2)  # finetune: + finetune_epochs
    assert {"loss", "test_acc", "val_acc"} <= set(history.columns)
    if method == "oracle":
        assert "score" not in arrays
    else:
        assert arrays["score"].shape == (len(p.train),) and torch.isfinite(
            torch.as_tensor(arrays["score"])).all()
    assert arrays["pred"].shape == (len(p.train),) and arrays["pred"].dtype == torch.int16
    if method in ("elr", "elr_plus"):
        assert arrays["target_argmax"].shape == (len(p.train),)
    if method in ("l2rw", "gradsim"):
        w = torch.as_tensor(arrays["weight"])
        assert w.shape == (len(p.train),) and (w.nan_to_num(0) >= 0).all()


def test_label_smoothing_only_for_cross_entropy_methods(digits):
    with pytest.raises(ValueError, match="label_smoothing"):
        registry.run(_problem(digits), "elr", model="mlp", recipe=SGD.replace(label_smoothing=0.1),
                     seed=0, progress=False)


def test_method_parameters_are_checked():
    with pytest.raises(ValueError, match="unknown"):
        registry.method_params("mixup")
    with pytest.raises(ValueError, match="lam"):
        registry.method_params("ce", {"lam": 3})
    with pytest.raises(ValueError, match="T"):
        registry.method_params("forward")
    assert registry.method_params("elr", {"beta": 0.9}) == {"lam": 3.0, "beta": 0.9}


def test_oracle_and_trusted_only_train_on_their_rows(digits):
    p = _problem(digits)
    _, h, _ = registry.run(p, "oracle", model="mlp", recipe=SGD.replace(epochs=1), seed=0, progress=False)
    assert np.isnan(h["memorized"].iloc[-1])  # no wrongly labelled row left to memorise
    _, h, _ = registry.run(p, "trusted_only", model="mlp", recipe=SGD.replace(epochs=1), seed=0,
                           progress=False)
    assert h["train_acc"].iloc[-1] == h["train_acc_true"].iloc[-1]  # true labels only


@pytest.mark.parametrize("method,model,r", [
    ("ce", "mlp", SGD),
    ("elr", "fastcnn", recipe.FASTCNN.replace(label_smoothing=0.0)),
    ("l2rw", "lenet5", SGD.replace(precision="bf16", augment="crop2+flip")),
])
def test_canaries_are_deterministic_and_see_the_code_path(method, model, r):
    c = registry.canary(method, model=model, recipe=r, params=PARAMS.get(method))
    a, b = runs.digest(c()), runs.digest(c())
    assert a == b
    # the same method on another precision, or another method, is another code path
    other = registry.canary("ce" if method != "ce" else "bootstrap_hard", model=model, recipe=r)
    assert runs.digest(other()) != a
    if r.precision == "bf16":
        fp32 = registry.canary(method, model=model, recipe=r.replace(precision="fp32"))
        assert runs.digest(fp32()) != a


@pytest.mark.parametrize("method,params", [
    ("ce", None), ("elr", None), ("elr_plus", None), ("forward", "T"), ("backward", "T"),
    ("bootstrap_hard", None), ("l2rw", {"inner": "sgd"}), ("l2rw", {"inner": "adam"}), ("gradsim", None),
    ("cleanlab_retrain", {"folds": 2}), ("trusted_only", None), ("oracle", None), ("finetune", None)])
def test_every_method_runs_on_the_fast_cnn(method, params):
    """The CIFAR chapters' code paths: each method's canary (two steps on synthetic images)
    with the fast CNN (BatchNorm, whitening bias frozen after 3 epochs, bf16) and its
    noisy-label recipe. (ELR+ once failed on the freezing of its two networks' parameters,
    and L2RW's JVP meta-gradient on BatchNorm's in-place running statistics.)"""
    from nlutils import recipe, registry, runs
    r = recipe.FASTCNN_NOISY
    if params == "T":
        params = {"T": torch.full((10, 10), 0.04) + 0.6 * torch.eye(10)}
    if params == {"inner": "adam"}:  # the exact Adam meta-gradient: no weight decay
        r = r.replace(optimizer="adam", lr=1e-3, momentum=0.0, nesterov=False, weight_decay=0.0)
    out = runs.run_canary(registry.canary(method, model="fastcnn", recipe=r, params=params))
    assert np.isfinite(out["values"]["history.loss"]).all(), "non-finite training loss"
    assert "score" in out["values"] or method == "oracle", "no per-row score"  # the oracle has none
    assert out["trace"]
