"""The experiment layer's paired statistics: what every verdict in the book rests on."""
import math

import pandas as pd
import pytest

from nlutils import runs
from nlutils.chapter import against_paper, compare, paired, per_seed, refused, unstable


def test_compare_interval_and_verdict():
    c = compare([71.0, 72.0, 73.0], [70.0, 70.5, 71.5])  # differences 1.0, 1.5, 1.5
    assert c["mean"] == pytest.approx(4.0 / 3) and c["n"] == 3
    assert c["low"] > 0 and c["verdict"] == "better"  # t(0.975, 2) = 4.303, sd 0.289: +0.62 to +2.05
    assert c["low"] == pytest.approx(4.0 / 3 - 4.302653 * 0.288675 / math.sqrt(3), abs=1e-4)
    assert compare([1.0, 2.0], [2.0, 1.0])["verdict"] == "within noise"
    assert compare([1.0], [0.0])["verdict"] == "within noise"  # one seed: no interval
    with pytest.raises(ValueError, match="equally long"):
        compare([1.0, 2.0], [1.0])


def test_paired_uses_the_seeds_both_rows_have():
    run = lambda acc: {"metrics": {"acc": acc}, "history": None}
    pool = {("a", "s", 0): run(80.0), ("a", "s", 1): run(81.0), ("a", "s", 2): run(90.0),
            ("b", "s", 0): run(79.0), ("b", "s", 1): run(79.5), ("b", "t", 2): run(0.0)}
    with pytest.raises(ValueError):  # three seeds against two: not paired
        compare(per_seed(pool, "a", "s", "acc"), per_seed(pool, "b", "s", "acc"))
    c = paired(pool, "a", "b", "s", "acc")
    assert c["n"] == 2 and c["mean"] == pytest.approx(1.25)  # seed 2 of a has no partner on s


def test_against_paper():
    assert against_paper([80.0, 81.0, 82.0], 81.5) == "reproduced"
    assert against_paper([80.0, 80.1, 80.2], 84.0) == "partly"
    assert against_paper([80.0, 80.1, 80.2], 90.0) == "not reproduced"
    assert against_paper([80.0, 80.1, 80.2], 78.0, at_least=True) == "reproduced"


def test_unstable_flags_a_run_that_collapses_below_its_seed_mates():
    def rec(val):
        return runs.Record({}, {}, pd.DataFrame({"epoch": range(1, len(val) + 1), "val_acc": val}))
    pool = {("a", "s", 0): rec([40, 55, 60, 70]), ("a", "s", 1): rec([42, 57, 62, 71]),
            ("a", "s", 2): rec([41, 20, 45, 66]),  # collapses at epoch 2, 36 points below its mates
            ("b", "s", 0): rec([40, 50, 60, 70]), ("b", "s", 1): rec([30, 45, 55, 70]),  # within 15
            ("c", "s", 0): rec([10, 10, 10, 10]),  # one seed: no mates, never flagged
            ("a", "t", 0): refused("ill-conditioned"), ("a", "t", 1): rec([1, 2, 3, 4])}
    assert unstable(pool) == [{"method": "a", "setting": "s", "seed": 2, "epoch": 2, "value": 20.0, "mates": 56.0}]
    assert {r["method"] for r in unstable(pool, drop=5)} == {"a", "b"}
    with pytest.raises(ValueError, match="drop"):
        unstable(pool, drop=0)
