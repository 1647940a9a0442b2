"""tools/worker.py: a chapter's namespace as papermill would build it, and jobs evaluated in it."""
from pathlib import Path

import pytest
from test_parameters import _worker

ROOT = Path(__file__).resolve().parents[1]


def test_namespace_is_the_chapters_with_the_injected_parameters(monkeypatch, tmp_path):
    monkeypatch.setenv("NLUTILS_RESULTS", str(tmp_path))
    ns = _worker().namespace("benchmark", "def t_hat", profile="smoke", params={"seeds": [3]})
    assert ns["cfg"].profile == "smoke" and ns["cfg"].seeds == [3]
    assert callable(ns["run"]) and callable(ns["t_hat"]) and "R" not in ns  # stopped before the runs


def test_a_missing_marker_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no code cell of benchmark"):
        _worker().namespace("benchmark", "no such text anywhere", profile="smoke")


def test_missing_lists_the_jobs_without_a_record_and_trains_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("NLUTILS_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("NLUTILS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("NLUTILS_TRAIN", "on")  # main() switches it off (and changes directory):
    monkeypatch.chdir(ROOT)                    # both restored after the test
    jobs = ["run('ce', 'digits_sym40', 0)", "run('elr', 'digits_sym40', 0)"]
    assert _worker().main(["benchmark", "--profile", "smoke", "--missing", "--through", "def t_hat", *jobs]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 jobs have no record" in out and all(j in out for j in jobs)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.npz"))
