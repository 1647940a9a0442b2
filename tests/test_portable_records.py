"""Run records that survive a change of processor (nlutils.runs): the key is the
configuration; a record is served while today's float64 canary of its code path agrees
with the stored one within RTOL and its precision trace is equal.

(a) portability: another kernel set finds the same committed records; (b) sensitivity: a
change of numerics the configuration does not show makes exactly the affected code paths'
records stale; (c) the tamper check is tests/test_book.py's."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nlutils import chapter, models, recipe, registry, runs, setting
from nlutils.methods import elr

ROOT = Path(__file__).resolve().parents[1]
BOOK_RUNS = ROOT / "book" / "runs"

# two committed records of the two families: a bf16 fast-CNN run and an fp32 MLP run
FIND = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from nlutils import runs
sys.path.insert(0, sys.argv[1] + "/tools")
from rekey_runs import identity
store = runs.RunStore(Path(sys.argv[1]) / "book" / "runs", train=False)
out = {}
for f in sys.argv[2:]:
    rec = runs.load(Path(f))
    config, canary, name = identity(rec)
    found, why = store.lookup(config, store.canary(name, canary))
    out[f] = {"path": str(store.path(config)), "found": found is not None, "why": why,
              "aten": runs.machine()["aten_kernels"]}
print(json.dumps(out))
"""


def _committed(method, model, precision, **params):
    for p in sorted((BOOK_RUNS / method).glob("*.npz")):
        c = runs.load(p).config
        if c["model"] == model and c["recipe"].get("precision", "fp32") == precision and \
                all(c["params"].get(k) == v for k, v in params.items()):
            return p
    pytest.skip(f"no committed {method}/{model}/{precision} record with {params}")


def _find(files, env):
    res = subprocess.run([sys.executable, "-c", FIND, str(ROOT), *map(str, files)],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_another_kernel_set_finds_the_same_committed_records():
    """ATen's AVX2 kernels and oneDNN capped at AVX2 (standing in for another processor):
    the records found under the default kernels are found there too, under the same key.
    L2RW with an Adam virtual step is there at its own, looser tolerance (its weights move by
    ~4e-9 between these kernels on an AMD EPYC, beyond RTOL)."""
    files = [_committed("ce", "fastcnn", "bf16"), _committed("elr", "fastcnn", "bf16"),
             _committed("ce", "mlp", "fp32"), _committed("l2rw", "fastcnn", "bf16", inner="adam")]
    here = _find(files, {})
    other = _find(files, {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                          "MKL_ENABLE_INSTRUCTIONS": "AVX2"})
    assert {v["aten"] for v in other.values()} <= {"AVX2", "DEFAULT"}
    for f in map(str, files):
        assert here[f]["found"], here[f]["why"]
        assert other[f]["found"], other[f]["why"]
        assert here[f]["path"] == other[f]["path"] == f


# ------------------------------------------------------------------ sensitivity

CONFIGS = {  # three code paths: two share the fast CNN, one is an fp32 MLP
    "ce_fastcnn": dict(s="cifar10_sym40", method="ce", model="fastcnn", recipe=recipe.FASTCNN_MEMO),
    "elr_fastcnn": dict(s="cifar10_sym40", method="elr", model="fastcnn",
                        recipe=recipe.FASTCNN_MEMO.replace(label_smoothing=0.0)),
    "ce_mlp": dict(s="mnist_sym40", method="ce", model="mlp",
                   recipe=recipe.Recipe(optimizer="adam", lr=1e-3, momentum=0.0, epochs=3)),
}


def _identity(c):
    return chapter.identify(setting.parse(c["s"]), c["method"], model=c["model"], recipe=c["recipe"], seed=0)


def _status(directory):
    """{name: (found, why)} with a fresh store (today's canaries computed anew)."""
    store = runs.RunStore(directory, train=False)
    out = {}
    for name, c in CONFIGS.items():
        config, canary, cname = _identity(c)
        rec, why = store.lookup(config, store.canary(cname, canary))
        out[name] = (rec is not None, why)
    return out


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """A store holding one record per code path (the compute is a stub: only the canary
    matters here)."""
    d = tmp_path_factory.mktemp("portable")
    store = runs.RunStore(d, train=True)
    for name, c in CONFIGS.items():
        config, canary, cname = _identity(c)
        store.run(config, lambda: ({"acc_last": 1.0}, pd.DataFrame({"epoch": [1]}), {}),
                  canary=canary, canary_name=cname)
    assert all(found for found, _ in _status(d).values())
    return d


def _stale(status):
    return {k for k, (found, _) in status.items() if not found}


def test_a_patched_loss_makes_only_its_records_stale(store_dir, monkeypatch):
    forward = elr.ELRLoss.forward
    monkeypatch.setattr(elr.ELRLoss, "forward",
                        lambda self, *a, **k: forward(self, *a, **k) * (1 + 1e-6))
    status = _status(store_dir)
    assert _stale(status) == {"elr_fastcnn"}
    assert "moved by" in status["elr_fastcnn"][1]


def test_a_default_inside_a_module_makes_only_its_records_stale(store_dir, monkeypatch):
    """The fast CNN's output scale (a default of its builder, not in any configuration)."""
    build = models.REGISTRY["fastcnn"]
    monkeypatch.setitem(models.REGISTRY, "fastcnn",
                        lambda s, k, **kw: build(s, k, **{"scale": 1 / 8, **kw}))
    assert _stale(_status(store_dir)) == {"ce_fastcnn", "elr_fastcnn"}


def test_a_changed_initialisation_makes_only_its_records_stale(store_dir, monkeypatch):
    build = models.REGISTRY["mlp"]

    def mlp(*a, **kw):
        net = build(*a, **kw)
        with torch.no_grad():
            net[1].weight.mul_(1.0001)
        return net
    monkeypatch.setitem(models.REGISTRY, "mlp", mlp)
    assert _stale(_status(store_dir)) == {"ce_mlp"}


def test_a_changed_precision_rule_is_seen_by_the_trace(store_dir, monkeypatch):
    """A precision rule does not move the float64 values (they run without autocast); the
    trace of which functions compute in low precision catches it. Here: autocast in
    float16 instead of bfloat16, and, separately, ELR's targets left in bf16."""
    from nlutils import train
    monkeypatch.setattr(train, "autocast", lambda precision="fp32", device="cpu": (
        torch.autocast("cpu", dtype=torch.float16) if precision == "bf16" else train.contextlib.nullcontext()))
    status = _status(store_dir)
    assert _stale(status) == {"ce_fastcnn", "elr_fastcnn"}
    assert "trace" in status["ce_fastcnn"][1]


def test_elr_on_bf16_logits_is_seen_by_the_trace(store_dir, monkeypatch):
    forward = elr.ELRLoss.forward

    def low(self, logits, *a, **k):  # the rule "the loss sees float32 logits" dropped
        return forward(self, logits.to(torch.bfloat16) if logits.dtype == torch.float32 else logits, *a, **k)
    monkeypatch.setattr(elr.ELRLoss, "forward", low)
    status = _status(store_dir)
    assert _stale(status) == {"elr_fastcnn"} and "trace" in status["elr_fastcnn"][1]


def test_tolerance_separates_processors_from_changes():
    ref = {"loss": np.array([2.3, 2.1]), "trace": "abc"}
    assert runs.agree(ref, {"loss": ref["loss"] * (1 + 1e-12), "trace": "abc"})[0]
    assert not runs.agree(ref, {"loss": ref["loss"] * (1 + 1e-7), "trace": "abc"})[0]
    assert not runs.agree(ref, {"loss": ref["loss"], "trace": "abd"})[0]
    assert not runs.agree(ref, {"loss": ref["loss"][:1], "trace": "abc"})[0]
    assert not runs.agree(ref, {"loss": ref["loss"]})[0]
    assert not runs.agree({}, ref)[0]


def test_the_canary_is_float64_and_thread_independent():
    canary = registry.canary("ce", model="fastcnn", recipe=recipe.FASTCNN_MEMO)
    out = runs.run_canary(canary)
    assert all(v.dtype == np.float64 for v in out["values"].values())
    assert {"history.loss", "test_logits", "score"} <= set(out["values"])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = runs.probe(canary())
    finally:
        torch.set_num_threads(before)
    assert runs.agree(runs.probe(out), two)[0]


def test_records_state_where_they_were_made(tmp_path):
    store = runs.RunStore(tmp_path, train=True)
    rec = store.run({"method": "ce", "seed": 0}, lambda: ({"acc": 1.0}, None, {}))
    m = rec.made_on
    assert m["processor"] and m["threads"] >= 1 and m["torch"] == torch.__version__ and m["date"]
    assert m["aten_kernels"] and m["device"] == "cpu"
    assert "threads" in runs.describe_machine(m)


def test_every_committed_record_is_migrated_with_its_evidence():
    """No record of the bitwise rule is left; each migrated one says how it was checked;
    MIGRATION.json counts them."""
    files = sorted(BOOK_RUNS.glob("*/*.npz"))
    summary = json.loads((BOOK_RUNS / "MIGRATION.json").read_text())
    migrated = 0
    for p in files:
        rec = runs.load(p)
        assert rec.canary, f"{p} has no canary"
        assert p.stem == runs.record_key(rec.config), f"{p} is not under its key"
        if rec.provenance.get("migrated"):
            migrated += 1
            assert rec.provenance["evidence"] and rec.provenance["fingerprint"]
            assert rec.made_on.get("torch") and rec.made_on.get("date")
        else:
            assert rec.made_on.get("processor"), f"{p} does not say where it was made"
    assert migrated == summary["kept"]


def test_restamp_rewrites_a_stale_canary_only_where_the_bits_are_the_same(tmp_path):
    """A record whose stored canary no longer matches (here: its trace altered) while its code
    path computes the same bits at HEAD and in the working tree is re-stamped, and then found."""
    import shutil
    src = _committed("ce", "patrini_mnist", "fp32")
    (tmp_path / "ce").mkdir()
    p = tmp_path / "ce" / src.name
    shutil.copy(src, p)
    rec = runs.load(p)
    rec.canary["trace"] = "0" * 16
    runs.save(rec, p)
    tool = [sys.executable, str(ROOT / "tools" / "rekey_runs.py")]
    assert subprocess.run(tool + ["--check", str(tmp_path)], capture_output=True).returncode == 1
    res = subprocess.run(tool + ["--restamp", "HEAD", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert "1 of 1 stale records re-stamped" in res.stdout, res.stdout + res.stderr
    assert subprocess.run(tool + ["--check", str(tmp_path)], capture_output=True).returncode == 0
    assert runs.load(p).metrics == runs.load(src).metrics


# ------------------------------------------------ a code path that amplifies rounding

L2RW_ADAM = dict(method="l2rw", model="fastcnn", params={"inner": "adam"}, trusted_per_class=10,
                 recipe=recipe.for_l2rw(recipe.FASTCNN_MEMO, "adam"))


def _l2rw_adam_probe():
    c = L2RW_ADAM
    _, canary, _ = chapter.identify(setting.parse("cifar10_sym40"), c["method"], model=c["model"],
                                    recipe=c["recipe"], seed=0, params=c["params"],
                                    trusted_per_class=c["trusted_per_class"])
    return canary, runs.probe(runs.run_canary(canary))


def test_only_l2rw_with_an_adam_virtual_step_declares_a_looser_tolerance():
    c = L2RW_ADAM
    adam = registry.canary("l2rw", model="fastcnn", recipe=c["recipe"], params={"inner": "adam"})
    sgd = registry.canary("l2rw", model="fastcnn", recipe=recipe.FASTCNN_MEMO, params={"inner": "sgd"})
    ce = registry.canary("ce", model="fastcnn", recipe=recipe.FASTCNN_MEMO)
    assert adam.rtol == registry.ADAM_META_RTOL > runs.RTOL
    assert not hasattr(sgd, "rtol") and not hasattr(ce, "rtol")
    store = runs.RunStore(Path("unused"), train=False)  # the store hands the tolerance on
    assert store.canary("adam", adam).rtol == registry.ADAM_META_RTOL
    assert store.canary("sgd", sgd).rtol == runs.RTOL


def test_a_tenfold_adam_epsilon_is_caught_at_the_looser_tolerance(monkeypatch):
    """The looser tolerance still separates a change of what the path computes (Adam's ε in
    the virtual step, ×10) from rounding."""
    from nlutils.methods import reweight
    canary, before = _l2rw_adam_probe()
    same = runs.Probe(_l2rw_adam_probe()[1])  # the control: unchanged code, computed again, agrees
    same.rtol = canary.rtol
    assert runs.agree(before, same)[0]
    terms = reweight._adam_terms
    monkeypatch.setattr(reweight, "_adam_terms", lambda p, m, v, t, b1, b2, lr, eps, he:
                        terms(p, m, v, t, b1, b2, lr, 10 * eps, he))
    _, after = _l2rw_adam_probe()
    changed = runs.Probe(after)
    changed.rtol = canary.rtol
    ok, why = runs.agree(before, changed)
    assert not ok and "moved by" in why, why
