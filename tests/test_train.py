import time

import pytest
import torch
import torch.nn.functional as F

from nlutils import models, noise, train


def _fit(ds, y=None, **kw):
    net = models.build("mlp", ds.input_shape, 10, seed=0)
    args = {**dict(epochs=5, lr=3e-3, test=(ds.x_test, ds.y_test), seed=0, progress=False), **kw}
    hist = train.fit(net, ds.x_train, ds.y_train if y is None else y, **args)
    return net, hist


def test_digits_reaches_90_percent_in_seconds(digits):
    t0 = time.perf_counter()
    net, hist = _fit(digits, epochs=15)
    assert time.perf_counter() - t0 < 15
    assert hist["test_acc"].iloc[-1] > 90
    assert train.accuracy(net, digits.x_test, digits.y_test) == pytest.approx(hist["test_acc"].iloc[-1])


def test_history_columns_and_memorisation_metric(digits):
    nl = noise.symmetric(digits.y_train, 0.4, 10, seed=0)
    net, hist = _fit(digits, y=nl.noisy, y_true=nl.clean, epochs=3)
    for col in ("epoch", "loss", "lr", "seconds", "train_acc", "train_acc_true", "memorized",
                "test_acc", "eval_seconds"):
        assert col in hist.columns
    pred = train.predict(net, digits.x_train).argmax(1)
    noisy = nl.is_noisy
    expected = 100 * float((pred[noisy] == nl.noisy[noisy]).double().mean())
    assert hist["memorized"].iloc[-1] == pytest.approx(expected)
    assert hist["train_acc_true"].iloc[-1] == pytest.approx(100 * float((pred == nl.clean).double().mean()))
    assert hist["noisy_true"].iloc[-1] == pytest.approx(100 * float((pred[noisy] == nl.clean[noisy]).double().mean()))
    assert hist["clean_correct"].iloc[-1] == pytest.approx(100 * float((pred[~noisy] == nl.clean[~noisy]).double().mean()))


def test_training_is_deterministic(digits):
    a, ha = _fit(digits, epochs=2)
    b, hb = _fit(digits, epochs=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert ha["loss"].tolist() == hb["loss"].tolist()
    c, hc = _fit(digits, epochs=2, seed=1)
    assert ha["loss"].tolist() != hc["loss"].tolist()


def test_unit_weights_equal_plain_cross_entropy(digits):
    a, _ = _fit(digits, epochs=1)
    b, _ = _fit(digits, epochs=1, weights=torch.ones(len(digits.y_train)))
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


def test_zero_weights_ignore_rows(digits):
    # rows of class 0 with weight 0 and flipped labels must not change the outcome
    y = digits.y_train.clone()
    w = torch.ones(len(y))
    w[y == 0] = 0
    y_bad = y.clone()
    y_bad[y == 0] = 1
    a, _ = _fit(digits, epochs=1, y=y, weights=w)
    b, _ = _fit(digits, epochs=1, y=y_bad, weights=w)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


def test_loss_hook_and_step_hook(digits):
    calls = []

    def loss_fn(logits, targets, rows):
        calls.append(len(rows))
        return F.cross_entropy(logits, targets, reduction="none")

    _fit(digits, epochs=1, loss_fn=loss_fn, batch_size=500)
    assert calls == [500, 500, 437]

    def step_loss(model, xb, yb, rows):
        F.cross_entropy(model(xb), yb).backward()
        return None  # gradients already there

    a, _ = _fit(digits, epochs=1, step_loss=step_loss)
    b, _ = _fit(digits, epochs=1)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


def test_index_rows_repeat_images(digits):
    m = noise.massive(digits.y_train, 2, 10, seed=0)
    net, hist = _fit(digits, y=m.labels, index=m.index, epochs=2, y_true=digits.y_train[m.index])
    assert hist["train_acc_true"].iloc[-1] > 50


def test_early_stopping_restores_the_best_weights(digits):
    nl = noise.symmetric(digits.y_train, 0.6, 10, seed=0)
    val = (digits.x_test[:180], digits.y_test[:180])
    net, hist = _fit(digits, y=nl.noisy, epochs=25, lr=1e-2, val=val, patience=4)
    best = hist.attrs["best_val_acc"]
    assert best == pytest.approx(hist["val_acc"].max())
    assert train.accuracy(net, *val) == pytest.approx(best)
    if hist["val_acc"].iloc[-1] < best:  # the final weights were not kept
        assert train.accuracy(net, *val) > hist["val_acc"].iloc[-1]


def test_random_crop_flip_keeps_shape_and_content():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = train.random_crop_flip(x, g, pad=0)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    out = train.random_crop_flip(x, g, pad=2)
    assert out.shape == x.shape


def test_bad_arguments(digits):
    net = models.build("mlp", digits.input_shape, 10)
    with pytest.raises(ValueError, match="optimizer"):
        train.fit(net, digits.x_train, digits.y_train, epochs=1, optimizer="lion", progress=False)
    with pytest.raises(ValueError, match="index has"):
        train.fit(net, digits.x_train, digits.y_train, epochs=1, index=torch.arange(3), progress=False)


def test_steps_per_epoch_streams_permutations(digits):
    seen = []

    def loss_fn(logits, targets, rows):
        seen.append(rows.clone())
        return F.cross_entropy(logits, targets, reduction="none")

    _fit(digits, epochs=3, loss_fn=loss_fn, batch_size=100, steps_per_epoch=5)
    assert len(seen) == 15 and all(len(r) == 100 for r in seen)
    first_pass = torch.cat(seen[:14])  # 14 full batches fit in one pass of 1437 rows
    assert len(torch.unique(first_pass)) == 1400  # no row repeats within a pass
    with pytest.raises(ValueError, match="steps_per_epoch"):
        _fit(digits, epochs=1, steps_per_epoch=0)


def test_on_epoch_end_can_stop_training(digits):
    _, hist = _fit(digits, epochs=10, on_epoch_end=lambda e, m, rec: e >= 3)
    assert len(hist) == 3
