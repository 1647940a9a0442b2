"""Same configuration, two fresh processes: bitwise-identical numbers; and a stored run
record equals a fresh recomputation of the same configuration."""
import json
import subprocess
import sys

import pandas as pd

from nlutils import data, models, noise, results, runs, train

SCRIPT = r"""
import hashlib, json, torch
from nlutils import data, models, noise, train
ds = data.load("digits")
nl = noise.symmetric(ds.y_train, 0.4, 10, seed=3)
net = models.build("mlp", ds.input_shape, 10, seed=3)
h = train.fit(net, ds.x_train, nl.noisy, y_true=ds.y_train, epochs=3, lr=3e-3,
              test=(ds.x_test, ds.y_test), seed=3, progress=False)
w = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()
cols = ["loss", "train_acc", "train_acc_true", "memorized", "test_acc"]
print(json.dumps({"history": h[cols].to_dict(orient="list"), "weights": w}))
"""


def _run_fresh():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_two_fresh_processes_agree_bitwise():
    a, b = _run_fresh(), _run_fresh()
    assert a == b
    rec = json.loads(a)
    assert len(rec["history"]["loss"]) == 3 and len(rec["weights"]) == 64


def _experiment():
    ds = data.load("digits")
    nl = noise.symmetric(ds.y_train, 0.4, 10, seed=1)
    net = models.build("mlp", ds.input_shape, 10, seed=1)
    hist = train.fit(net, ds.x_train, nl.noisy, y_true=ds.y_train, epochs=2, lr=3e-3,
                     test=(ds.x_test, ds.y_test), seed=1, progress=False)
    return {"acc": float(hist["test_acc"].iloc[-1])}, hist.drop(columns=["seconds", "eval_seconds"]), {}


def test_stored_record_equals_fresh_recomputation(tmp_path):
    """A run record served from the folder equals what a fresh computation gives."""
    config = {"test": "reproducibility", "seed": 1, "epochs": 2}
    first = runs.RunStore(tmp_path).run(config, _experiment)
    served = runs.RunStore(tmp_path, train=False).run(config, lambda: (_ for _ in ()).throw(AssertionError("recomputed")))
    metrics, fresh, _ = _experiment()
    pd.testing.assert_frame_equal(served.history, first.history)
    pd.testing.assert_frame_equal(served.history, fresh, check_dtype=False)
    assert served.metrics == metrics
    p = results.save("demo", {"x": 1}, profile="smoke", directory=tmp_path)
    assert p.name == "demo.smoke.json"
    assert not (tmp_path / "demo.json").exists()
