"""The setting grammar, the recipe, and run records keyed by configuration and by what the
code computes (canaries compared by tolerance)."""
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nlutils import data, models, noise, recipe, runs, setting, train


# ------------------------------------------------------------------ settings

@pytest.mark.parametrize("name,dataset,kind,rate", [
    ("cifar10_sym40", "cifar10", "symmetric", 0.4),
    ("cifar10_asym40", "cifar10", "patrini_cifar10", 0.4),
    ("mnist_patrini0.6", "mnist", "patrini_mnist", 0.6),
    ("fmnist_sym60", "fashion_mnist", "symmetric", 0.6),
    ("mnist_fixedother0.8", "mnist", "fixed_other", 0.8),
    ("digits_symincl40", "digits", "symmetric_incl", 0.4),
    ("mnist_clean", "mnist", "none", 0.0),
])
def test_setting_grammar(name, dataset, kind, rate):
    s = setting.parse(name)
    assert (s.dataset, s.noise, s.rate, s.human) == (dataset, kind, rate, None)


def test_human_settings_and_bad_names():
    s = setting.parse("cifar10n_worse")
    assert s.is_human and s.human == "worse" and s.dataset == "cifar10"
    for bad, word in [("cifar10", "<data>_<noise>"), ("svhn_sym40", "svhn"), ("mnist_sym", "sym"),
                      ("mnist_asym1.5", "rate"), ("fmnist_asym40", "class-pair"),
                      ("cifar10n_best", "best"), ("mnist_flip40", "flip"), ("mnist_sym100", "rate")]:
        with pytest.raises(ValueError, match=word):
            setting.parse(bad)


def test_build_uses_noise_corrupt_and_copies_no_image(digits):
    s = setting.parse("digits_sym40")
    p = s.build(seed=3, trusted_per_class=5, val_fraction=0.1, ds=digits)
    nl = noise.corrupt(digits.y_train, "symmetric", 0.4, 10, seed=3)
    assert torch.equal(p.labels.noisy, nl.noisy)
    assert p.ds.x_train is digits.x_train  # rows index the shared tensor
    rows = torch.cat([p.train, p.trusted, p.val])
    assert len(torch.unique(rows)) == len(rows) == len(digits.y_train)
    assert len(p.trusted) == 50 and torch.bincount(digits.y_train[p.trusted]).eq(5).all()
    assert abs(len(p.val) - 0.1 * (len(digits.y_train) - 50)) <= 10
    assert 35 < p.noise_rate < 45
    q = s.build(seed=3, n_train=500, ds=digits)
    assert len(q.train) == 500 and torch.bincount(digits.y_train[q.train]).eq(50).all()
    assert torch.equal(q.train, s.build(seed=4, n_train=500, ds=digits).train), \
        "the subset is fixed across seeds"
    assert torch.equal(q.train, data.stratified_subset(digits.y_train, 500, setting.SUBSET_SEED))
    for kw, name in [(dict(n_train=-5), "n_train"), (dict(n_train=505), "multiple"),
                     (dict(seed="abc"), "seed"), (dict(val_fraction=1.0), "val_fraction"),
                     (dict(trusted_per_class=-1), "trusted_per_class")]:
        with pytest.raises(ValueError, match=name):
            s.build(ds=digits, **kw)


# ------------------------------------------------------------------ recipes

def test_recipe_validates_and_feeds_fit(digits):
    r = recipe.Recipe(optimizer="adam", lr=3e-3, momentum=0.0, epochs=2, schedule="step",
                      schedule_args=dict(milestones=[0.5], gamma=0.1))
    net = models.build("mlp", digits.input_shape, 10, seed=0)
    h = train.fit(net, digits.x_train, digits.y_train, **r.fit_kwargs(), progress=False)
    assert h["lr"].tolist() == pytest.approx([3e-3, 3e-4])  # the rate each epoch trained with
    for change, word in [(dict(lr=0), "lr"), (dict(epochs=0), "epochs"), (dict(optimizer="lbfgs"), "optimizer"),
                         (dict(precision="fp8"), "precision"), (dict(augment="rot90"), "augment"),
                         (dict(schedule="cosine"), "schedule"), (dict(nesterov=True), "nesterov"),
                         (dict(schedule_args=dict(milestones=[2])), "milestones"), (dict(batch="x"), "batch")]:
        with pytest.raises(ValueError, match=word):
            r.replace(**change)
    assert recipe.FASTCNN.precision == "bf16" and recipe.FASTCNN.replace(epochs=3).epochs == 3


@pytest.mark.parametrize("epochs", [5, 6, 7, 30])
def test_one_step_schedule_formula(epochs):
    f = train.lr_schedule("step", epochs, milestones=[0.5, 0.75], gamma=0.1)
    assert f(0) == 1.0 and f(epochs - 1) == pytest.approx(0.01)
    assert f(round(0.5 * epochs)) == pytest.approx(0.1) and f(round(0.5 * epochs) - 1) == 1.0
    t = train.lr_schedule("triangle", epochs, warmup=0.2, start=0.2, end=0.07)
    w = round(0.2 * epochs)
    assert t(0) == pytest.approx(0.2 if w else 1.0) and t(w) == pytest.approx(1.0)
    assert t(epochs) == pytest.approx(0.07)


# ------------------------------------------------------------------ run records

def _problem(digits):
    return setting.parse("digits_sym40").build(seed=0, ds=digits)


def _make(lr, digits, scale=1.0):
    """A run: an MLP on digits for one epoch; returns (metrics, history, arrays)."""
    def compute():
        p = _problem(digits)
        net = models.build("mlp", digits.input_shape, 10, seed=0)
        h = train.fit(net, digits.x_train, p.labels.noisy[p.train], index=p.train, epochs=1, lr=lr,
                      test=(digits.x_test, digits.y_test), progress=False)
        score = train.predict(net, digits.x_train, p.train).softmax(1)[:, 0] * scale
        return {"test_acc": float(h["test_acc"].iloc[-1])}, h, {"score": score}
    return compute


def _canary(lr, scale=1.0):
    """The same code path on 32 synthetic examples for 2 steps."""
    def canary():
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
        net = models.build("mlp", (1, 8, 8), 10, seed=0)
        train.fit(net, x, y, epochs=2, batch_size=16, lr=lr, progress=False, track_train=False)
        # a few continuous numbers (a canary is stored in every record: keep it small)
        return [torch.stack([p.detach().double().norm() for p in net.parameters()]),
                train.predict(net, x).softmax(1)[:, 0] * scale]
    return canary


def test_run_store_round_trip_and_replay(digits, tmp_path):
    cfg = {"method": "ce", "setting": "digits_sym40", "seed": 0, "lr": 1e-3}
    store = runs.RunStore(tmp_path, train=True)
    a = store.run(cfg, _make(1e-3, digits), canary=_canary(1e-3), canary_name="ce")
    assert store.misses == 1 and a.arrays["score"].dtype == np.float16 and a.seconds > 0
    files = list(tmp_path.rglob("*.npz"))
    assert len(files) == 1 and files[0].parent.name == "ce" and files[0].stat().st_size < 20_000
    # a new process (new store) with training off finds it, bit for bit
    replay = runs.RunStore(tmp_path, train=False)
    b = replay.run(cfg, lambda: pytest.fail("must not train"), canary=_canary(1e-3), canary_name="ce")
    assert b.metrics == a.metrics and np.array_equal(b.arrays["score"], a.arrays["score"])
    pd.testing.assert_frame_equal(a.history, b.history, check_exact=True)
    assert replay.hits == 1 and replay.seconds == pytest.approx(a.seconds)
    # another configuration is missing, and training is off
    with pytest.raises(runs.MissingRun):
        replay.run(dict(cfg, seed=1), _make(1e-3, digits), canary=_canary(1e-3), canary_name="ce")


def test_refactor_keeps_records_and_numeric_change_makes_them_stale(digits, tmp_path):
    cfg = {"method": "ce", "setting": "digits_sym40", "seed": 0}
    runs.RunStore(tmp_path).run(cfg, _make(1e-3, digits), canary=_canary(1e-3), canary_name="ce")

    def refactored_canary():  # other code text, same numbers: the record stays valid
        out = _canary(1e-3)()
        return [t.clone() for t in out]
    kept = runs.RunStore(tmp_path, train=False)
    kept.run(cfg, _make(1e-3, digits), canary=refactored_canary, canary_name="ce")
    assert kept.hits == 1

    # a change of numerics (here a different scale of the score): stale, not served
    stale = runs.RunStore(tmp_path, train=False)
    with pytest.raises(runs.MissingRun, match="stale"):
        stale.run(cfg, _make(1e-3, digits, 1.0 + 1e-7), canary=_canary(1e-3, 1.0 + 1e-7),
                  canary_name="ce")
    # and only the affected method: another method's records stay fresh
    other = {"method": "elr", "setting": "digits_sym40", "seed": 0}
    store = runs.RunStore(tmp_path)
    store.run(other, _make(1e-3, digits), canary=_canary(2e-3), canary_name="elr")
    again = runs.RunStore(tmp_path, train=False)
    again.run(other, _make(1e-3, digits), canary=_canary(2e-3), canary_name="elr")
    assert again.hits == 1


def test_configs_must_be_plain_values(tmp_path):
    store = runs.RunStore(tmp_path)
    with pytest.raises(TypeError, match="configuration"):
        store.key({"fn": lambda: 0})
    assert store.key({"a": 1, "b": [1, 2]}) == store.key({"b": [1, 2], "a": 1})


# ------------------------------------------------------------------ this round's additions

def test_canary_does_not_depend_on_threads():
    """The canary runs on one thread (run_canary) and in float64: a plain call on two
    threads agrees with it within the tolerance, and its precision trace is equal."""
    from nlutils import registry
    canary = registry.canary("ce", model="fastcnn", recipe=recipe.FASTCNN_MEMO)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two, one = runs.probe(canary()), runs.probe(runs.run_canary(canary))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert runs.agree(one, two) == (True, "")
    assert one["trace"] == two["trace"]


def test_track_train_sample(digits):
    """track_train=k measures the memorisation columns on a fixed sample of k rows; the
    training itself is bitwise the same as with every row tracked."""
    x, y = digits.x_train, digits.y_train
    nl = noise.symmetric(y, 0.4, 10, seed=0)
    kw = dict(epochs=2, batch_size=64, optimizer="sgd", lr=0.05, seed=0, progress=False,
              y_true=y)
    full_net, part_net = (models.build("mlp", (1, 8, 8), 10, seed=0, hidden=(32,)) for _ in range(2))
    h_full = train.fit(full_net, x, nl.noisy, track_train=True, **kw)
    h_part = train.fit(part_net, x, nl.noisy, track_train=300, **kw)
    assert h_full["loss"].equals(h_part["loss"])
    for a, b in zip(full_net.parameters(), part_net.parameters()):
        assert torch.equal(a, b)
    # the sample's numbers, recomputed by hand
    rows = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:300].sort().values
    pred = train.predict(part_net, x, rows).argmax(1)
    wrong = nl.noisy[rows] != y[rows]
    assert h_part["memorized"].iloc[-1] == pytest.approx(
        100 * float((pred[wrong] == nl.noisy[rows][wrong]).double().mean()))
    assert h_part["memorized"].iloc[-1] != h_full["memorized"].iloc[-1]
    with pytest.raises(ValueError, match="track_train"):
        train.fit(part_net, x, nl.noisy, track_train=-3, **kw)


@contextmanager
def locked_by_another_process(store, config):
    """``(lock file, pid)``: the run's lock held by a live process other than this one, which
    is gone after the block."""
    import subprocess
    import sys
    lock = store.path(config).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock.write_text(str(other.pid))
        yield lock, other.pid
    finally:
        other.kill()
        other.wait()


def test_two_workers_never_compute_one_run_twice(tmp_path):
    """A run another live process is computing (its .lock) is waited for, not recomputed;
    a lock left by a dead process is taken over."""
    import threading
    store = runs.RunStore(tmp_path, train=True)
    config = {"method": "ce", "seed": 0}
    with locked_by_another_process(store, config) as (lock, pid):
        calls = []

        def finish():  # the "other worker" writes its record, then releases the lock
            runs.save(runs.Record(config, {"acc": 1.0}), store.path(config))
            lock.unlink()
        threading.Timer(0.5, finish).start()
        rec = store.run(config, lambda: calls.append(1) or ({"acc": 2.0}, None, {}))
        assert rec.metrics == {"acc": 1.0} and not calls
    config2 = {"method": "ce", "seed": 1}
    stale = store.path(config2).with_suffix(".lock")
    stale.write_text(str(pid))  # that process is gone
    rec = store.run(config2, lambda: ({"acc": 3.0}, None, {}))
    assert rec.metrics == {"acc": 3.0} and not stale.exists()


def test_a_sharing_worker_skips_a_busy_run_and_the_lock_is_taken_once(tmp_path):
    """``on_busy="skip"``: a run another live process computes raises Busy instead of being
    waited for (its compute never called); taking a lock is atomic: a held lock refuses a
    second taker, a lock whose process is gone is taken over, and a lock taken by this
    process serves its run."""
    store = runs.RunStore(tmp_path, train=True, on_busy="skip")
    config = {"method": "ce", "seed": 0}
    with locked_by_another_process(store, config) as (lock, pid):
        with pytest.raises(runs.Busy, match=str(pid)):
            store.run(config, lambda: 1 / 0)
        assert not runs._Lock(lock).take() and lock.read_text() == str(pid)
    assert runs._Lock(lock).take() and lock.read_text() == str(os.getpid())  # the dead one's lock
    assert store.run(config, lambda: ({"acc": 1.0}, None, {})).metrics == {"acc": 1.0}
    assert not lock.exists() and not list(tmp_path.rglob("*.lock.*"))
    with pytest.raises(ValueError, match="on_busy"):
        runs.RunStore(tmp_path, on_busy="later")


def test_worker_shares_a_job_file_as_a_queue(tmp_path, monkeypatch, capsys):
    """``tools/worker.py --jobs-file F --share``: comments and blank lines are ignored, a busy
    job is skipped and tried once more after the others, the store is told not to wait."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("worker", Path(__file__).parents[1] / "tools" / "worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    store, done = runs.RunStore(tmp_path), []

    def job(name):
        if name == "b" and done.count("b?") == 0:
            done.append("b?")
            raise runs.Busy("b is being computed")
        done.append(name)
    monkeypatch.setattr(worker, "namespace", lambda *a, **k: {"ch": type("C", (), {"store": store}), "job": job})
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# a queue\njob('a')\n\njob('b')  # busy the first time\njob('c')\n")
    assert worker.main(["ch", "--through", "x", "--threads", "1", "--jobs-file", str(jobs), "--share"]) == 0
    assert done == ["a", "b?", "c", "b"] and store.on_busy == "skip"
    out = capsys.readouterr().out  # nothing trained: every job reports a found run ("have")
    assert "busy job('b')" in out and "have job('c')" in out and "done" not in out
    assert worker.main(["ch", "--through", "x", "--threads", "1", "job('d')"]) == 0  # jobs after the options
    assert done[-1] == "d"


def test_stop_file_ends_a_computation_between_runs(tmp_path, monkeypatch):
    """With the stop file present (<runs>/STOP), stored records are still served and the
    next run to compute raises Stopped before it starts; without it, it is computed."""
    store = runs.RunStore(tmp_path / "runs", train=True)
    done = store.run({"method": "ce", "seed": 0}, lambda: ({"acc": 1.0}, None, {}))
    monkeypatch.delenv("NLUTILS_STOP", raising=False)
    stop = tmp_path / "runs" / "STOP"  # the default: the store's own folder
    calls = []
    new = {"method": "ce", "seed": 1}
    assert store.run(new, lambda: calls.append(1) or ({"acc": 2.0}, None, {})).metrics == {"acc": 2.0}
    stop.write_text("")
    assert store.run({"method": "ce", "seed": 0}, lambda: 1 / 0).metrics == done.metrics
    with pytest.raises(runs.Stopped, match="STOP"):
        store.run({"method": "ce", "seed": 2}, lambda: calls.append(2) or ({"acc": 3.0}, None, {}))
    assert calls == [1] and not store.path({"method": "ce", "seed": 2}).exists()


def test_blog_sweep_replayed_on_one_network(digits):
    """``warm_start``: the blog's sweep trains one network object for every (alpha, lr) in
    turn; the replay starts the last run from the weights the earlier runs left."""
    from nlutils import registry
    p = setting.parse("digits_alphashift2").build(0, n_train=300, val_fraction=0.2)
    before = registry._sibling(p, 1)
    assert torch.equal(before.val, p.val) and torch.equal(before.image[::2], p.image[::3])
    r = recipe.Recipe(optimizer="adadelta", lr=0.5, momentum=0.0, batch_size=64, epochs=6)
    blog = {"stop_rule": "blog"}
    fresh, _, _ = registry.run(p, "ce", model="mlp1", recipe=r, seed=0, params=blog)
    again, _, _ = registry.run(p, "ce", model="mlp1", recipe=r, seed=0, params=blog)
    warm, _, _ = registry.run(p, "ce", model="mlp1", recipe=r, seed=0,
                              params={**blog, "warm_start": [[0, 0.1], [1, 0.05]]})
    assert fresh["acc_last"] == again["acc_last"]  # deterministic: the difference is the start
    assert len(warm["warm_test_acc"]) == 2 and len(warm["warm_epochs"]) == 2 and warm["warm_seconds"] > 0
    assert warm["acc_last"] != fresh["acc_last"]
    with pytest.raises(ValueError, match="warm_start"):
        registry.run(p, "ce", model="mlp1", recipe=r, seed=0, params={"warm_start": [[0, 0.1]]})
