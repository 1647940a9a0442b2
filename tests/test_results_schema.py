"""The executed chapters' results files hold what their issues promise, in the promised shape."""
import json
import math
import re
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "book" / "results"


def load(chapter):
    path = RESULTS / f"{chapter}.json"
    if not path.exists():
        pytest.fail(f"{path} missing: execute the chapter at profile=book")
    rec = json.loads(path.read_text())
    assert rec["profile"] == "book"
    return rec["metrics"]


def is_pct(v):
    return isinstance(v, (int, float)) and 0 <= v <= 100


def test_elr_metrics():
    m = load("elr")
    for method in ("ce", "elr"):
        for setting in ("sym20", "sym40", "sym60", "sym80", "asym40"):
            cell = m["acc"][method][setting]
            assert is_pct(cell["mean"]) and cell["std"] >= 0
        assert is_pct(m["memorized_final"][method]["mean"])
    assert is_pct(m["identification"]["precision"]) and is_pct(m["identification"]["recall"])
    # the papers' regime: the fast CNN on CIFAR-10's training images (minus the held-out rows)
    assert m["model"] == "fastcnn" and 45_000 <= m["n_train"] <= 50_000
    for method in ("ce", "elr"):
        for setting in ("sym20", "sym40", "sym60", "sym80", "asym40"):
            assert m["acc"][method][setting]["n"] >= (3 if setting == "sym40" else 2), (method, setting)
        for setting in ("sym40", "asym40"):
            cell = m["acc_aug"][method][setting]
            assert is_pct(cell["mean"]) and cell["n"] >= 3, (method, setting)
    assert is_pct(m["elr_plus"]["acc"]["mean"]) and m["elr_plus"]["acc"]["n"] >= 2


def test_massive_noise_metrics():
    m = load("massive_noise")
    alphas = {"0", "1", "5", "10", "20", "50", "100"}
    for model in ("perceptron", "mlp1", "mlp2", "mlp4", "conv4"):
        assert set(m["acc"][model]) == alphas, model  # every model at every alpha of the grid
        # a float per α of the sweep, {"mean", "std", "n"} where the claims rest on several seeds
        assert all(is_pct(v["mean"] if isinstance(v, dict) else v) for v in m["acc"][model].values()), model
        assert set(m["stopped_by"][model]) == alphas
        assert set(m["stopped_by"][model].values()) <= {"patience", "budget"}, model
        assert m["throughput"][model] > 0
        for alpha in ("50", "100"):  # the claims rest on three seeds there
            cell = m["acc"][model][alpha]
            assert isinstance(cell, dict) and cell["n"] >= 3 and cell["std"] >= 0, (model, alpha)


def test_gradient_similarity_metrics():
    m = load("gradient_similarity")
    for method in ("vanilla", "gradsim", "oracle"):
        assert is_pct(m["last5_acc"][method]["mean"]) and m["last5_acc"][method]["n"] == 5
    g = m["gain_vs_vanilla"]
    assert g["low"] <= g["mean"] <= g["high"] and g["n"] == 5
    assert m["ablations"]["variants"], "no ablation ran"
    for v in m["ablations"]["variants"]:
        assert v["epochs"] == 30 and len(v["seeds"]) >= 3, (v["family"], v["variant"])
        assert v["vs_vanilla"]["low"] <= v["vs_vanilla"]["high"]
    assert {r["clean"] for r in m["ablations"]["clean_ratio"]} == {0.2, 0.4, 0.6, 0.8}
    assert m["cnn"]["model"] == "fastcnn" and len(m["cnn"]["seeds"]) >= 3
    for method in ("vanilla", "gradsim", "oracle"):
        assert is_pct(m["cnn"][method]["acc_last"]["mean"])
    assert 0 < m["epoch_cost_ratio"] <= 1.15


def test_loss_correction_metrics():
    m = load("loss_correction")
    assert m["model"] == "fastcnn" and m["n_train"] >= 40000
    losses = ("ce", "unhinged", "sigmoid", "savage", "bootstrap_soft", "bootstrap_hard",
              "backward_T", "backward_That", "forward_T", "forward_That", "nnbackward_T", "nnbackward_That")
    for loss in losses:
        for setting in ("none", "sym0.2", "asym0.2", "asym0.6"):
            v = m["cifar10"][loss][setting]["mean"]
            assert is_pct(v) or math.isnan(v)  # NaN only for a refused (ill-conditioned) T̂
            assert m["cifar10"][loss][setting]["n"] >= 2 or math.isnan(v), (loss, setting)
        assert m["mnist"][loss]
    assert m["T_hat_error"]["cifar10"]["asym0.6"]["robust"] >= 0
    assert set(m["bounded_lr"]) == {"unhinged", "sigmoid", "savage"}
    # the chapter's effect: CE collapses at 60% asymmetric noise, the correction with the true
    # T repairs most of it, and every loss trains without noise
    acc = {k: {s: v["mean"] for s, v in row.items()} for k, row in m["cifar10"].items()}
    assert acc["ce"]["none"] >= 88 and acc["ce"]["asym0.6"] <= 65
    assert acc["forward_T"]["asym0.6"] >= acc["ce"]["asym0.6"] + 20
    assert min(row["none"] for row in acc.values()) >= 80


def test_benchmark_metrics():
    m = load("benchmark")
    assert m["model"] == "fastcnn" and 45_000 <= m["n_train"] <= 50_000
    main = ("cifar10_sym40", "cifar10n_aggre", "cifar10n_random1", "cifar10n_worse")
    methods = ("ce", "elr", "elr_plus", "forward_That", "backward_That", "bootstrap_hard", "l2rw", "gradsim",
               "cleanlab_retrain", "trusted_only", "oracle")
    for protocol in ("acc_last", "acc_noisyval", "acc_besttest"):
        for s in (*main, "cifar10_asym40"):
            for method in methods:
                cell = m[protocol][s][method]
                assert is_pct(cell["mean"]) or math.isnan(cell["mean"]), (protocol, s, method)
                assert math.isnan(cell["mean"]) or cell["n"] >= (3 if s in main else 2), (protocol, s, method)
    for s in ("cifar10_sym40", "cifar10n_worse"):  # the memorisation regime: CE, the three best and ELR
        memo = m["acc_noisyval_memo"][s]  # (ELR re-run whatever its rank: the regime tests its claim)
        k = m["memo_k"]  # the "three best"; ELR adds a row only where it is not among them
        assert k == 3 and {"ce", "elr"} <= set(memo) and k + 1 <= len(memo) <= k + 2
        assert all(v["n"] >= 3 for v in memo.values())
        assert is_pct(m["cleanlab_find_label_issues"][s]["precision"])
        assert 50 <= m["auroc"][s]["ce"] <= 100 and is_pct(m["precision_at_true_k"][s]["ce"])
    assert m["time_ratio"]["ce"] == pytest.approx(1.0) and all(v > 0 for v in m["time_ratio"].values())
    assert m["unstable_drop"] > 0 and 0 <= m["n_unstable_fewer"] <= m["n_unstable"] == len(m["unstable_runs"])
    # what must hold whatever the ranking: the oracle (wrong labels removed) beats CE on the
    # synthetic settings, and the three protocols are ordered as their definitions say
    acc = m["acc_noisyval"]
    assert all(acc[s]["oracle"]["mean"] > acc[s]["ce"]["mean"] for s in ("cifar10_sym40", "cifar10_asym40"))
    for s in main:
        assert m["acc_besttest"][s]["ce"]["mean"] >= max(m["acc_last"][s]["ce"]["mean"], acc[s]["ce"]["mean"])


# chapters whose committed page predates the seeds its verdicts now rest on (issue 35); strict:
# a re-executed page that passes turns its entry into a failure until it is removed here
PENDING_SEEDS: set = set()
LEDGER = sorted(p.stem for p in RESULTS.glob("*.json") if p.name.count(".") == 1)


@pytest.mark.parametrize("chapter", [pytest.param(c, marks=pytest.mark.xfail(
    c in PENDING_SEEDS, reason="page not yet re-executed with its verdict seeds", strict=True)) for c in LEDGER])
def test_every_verdict_rests_on_three_seeds(chapter):
    rec = json.loads((RESULTS / f"{chapter}.json").read_text())
    for c in rec.get("claims") or []:
        text = f"{c['protocol']} {c['ours']}"
        assert not re.search(r"\bseed \d+\b", c["protocol"]), (c["claim"], "one seed")
        counts = [int(n) for n in re.findall(r"\b(\d+) seeds\b", text)]
        assert all(n >= 3 for n in counts), (c["claim"], counts)
