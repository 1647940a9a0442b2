"""Same configuration, two fresh processes: bitwise-identical numbers; and a cached result
equals a fresh recomputation of the same configuration."""
import json
import subprocess
import sys

import pandas as pd

from nlutils import data, models, noise, results, train

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
    return {"history": hist.drop(columns=["seconds", "eval_seconds"])}


def test_cached_result_equals_fresh_recomputation(tmp_path):
    config = {"test": "reproducibility", "seed": 1, "epochs": 2}
    cache = results.RunCache(tmp_path)
    first = cache.run(config, _experiment)
    served = results.RunCache(tmp_path).run(config, lambda: (_ for _ in ()).throw(AssertionError("recomputed")))
    fresh = results.RunCache(tmp_path, enabled=False).run(config, _experiment)
    pd.testing.assert_frame_equal(served["history"], first["history"])
    pd.testing.assert_frame_equal(served["history"], fresh["history"])
