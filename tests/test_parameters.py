"""Every chapter parameter is checked before any training, under the name the reader passed.

Two layers:

* a generated walk (in-process, seconds): for every parameter each chapter declares, a value
  of the wrong type and every value its rules list as ``bad`` (:class:`nlutils.profiles.Rule`)
  are injected the way papermill injects them, and the chapter's cells are executed up to
  its ``Chapter(...)`` cell, which must raise a ``ValueError`` naming the parameter from the
  parameter resolution. A parameter added to a chapter is walked without a new test line;
  one without a rule is refused by :func:`nlutils.profiles.resolve`;
* the cases a reader met, end to end through papermill, each under 60 s.
"""
import json
import time
import traceback
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import pytest

from nlutils import profiles

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ["foundations", "massive_noise", "meta_reweight", "elr", "gradient_similarity",
            "loss_correction", "benchmark"]


@lru_cache(maxsize=None)
def setup_cells(chapter: str):
    """``(parameters cell, [the cells after it up to and including the one that builds the
    Chapter])``: what a chapter runs before it can train anything."""
    nb = json.loads((ROOT / "notebooks" / f"{chapter}.ipynb").read_text())
    code = [(c["metadata"].get("tags", []), "".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "code"]
    first = next(i for i, (tags, _) in enumerate(code) if "parameters" in tags)
    last = next(i for i, (_, src) in enumerate(code) if "ch = Chapter(" in src)
    cells = [src for _, src in code[first + 1:last + 1]]
    assert not any(".train(" in src or "registry.run(" in src for src in cells), \
        f"{chapter}: a cell before Chapter(...) could train"
    return code[first][1], cells


def run_setup(chapter: str, params: dict, profile: str = "smoke") -> dict:
    """Execute ``chapter``'s cells up to its Chapter as papermill would with ``params``: the
    parameters cell, the injected ``# Parameters`` cell (also in IPython's input history,
    where the chapter looks for names it does not declare), then the setup cells."""
    setup_cells(chapter)  # asserts that none of these cells can train
    return _worker().namespace(chapter, "ch = Chapter(", profile=profile, params=params)


@lru_cache(maxsize=None)
def _worker():
    """``tools/worker.py``, which builds a chapter's namespace the same way for its workers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("worker", ROOT / "tools" / "worker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@lru_cache(maxsize=None)
def declarations(chapter: str):
    """``{parameter: (default, [rules])}`` of a chapter, from its own presets and the
    ``checks`` it passes to Chapter(...) (captured by a stand-in while its setup runs)."""
    import nlutils.chapter as chapter_mod

    seen = {}
    real = chapter_mod.Chapter.__init__

    def spy(self, *a, checks=None, **kw):
        seen["checks"] = checks
        real(self, *a, checks=checks, **kw)
    chapter_mod.Chapter.__init__ = spy
    try:
        presets = run_setup(chapter, {})["PRESETS"]
    finally:
        chapter_mod.Chapter.__init__ = real
    out = {}
    for name in sorted(profiles.declared(presets) - {"profile"}):
        default = next((p[name] for p in presets.values() if p.get(name) is not None), None)
        out[name] = (default, profiles.rules_for(name, seen["checks"] or {}))
    return out


def wrong_type(default):
    """A value of another type than the profile's default, as ``papermill -p`` could pass it."""
    if isinstance(default, bool):
        return 3
    if isinstance(default, (int, float)):
        return "seven"  # a string that is no literal
    return 7  # for a list or a string parameter


def cases():
    out = []
    for chapter in CHAPTERS:
        for name, (default, rules) in declarations(chapter).items():
            out.append((chapter, name, wrong_type(default), {}))
            out += [(chapter, name, b, r.context) for r in rules for b in r.bad]
    return out


CASES = cases()


def test_every_parameter_has_a_rule_and_a_bad_value():
    for chapter in CHAPTERS:
        for name, (_, rules) in declarations(chapter).items():
            assert rules, f"{chapter}.{name} has no rule"
            assert any(r.bad for r in rules), f"{chapter}.{name}: no rule lists a value it refuses"
    assert len(CASES) > 300, len(CASES)


@pytest.mark.parametrize("chapter,name,value,context", CASES,
                         ids=[f"{c}-{n}-{v!r}"[:80] for c, n, v, _ in CASES])
def test_bad_value_is_refused_by_name_before_training(chapter, name, value, context):
    with pytest.raises(ValueError) as err:
        run_setup(chapter, {**context, name: value})
    message = str(err.value)
    assert message.startswith((f"{name}=", f"{name}[")), message
    frames = [f.name for f in traceback.extract_tb(err.value.__traceback__)]
    assert "resolve" in frames, f"raised outside the parameter resolution: {frames}\n{message}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_defaults_pass_and_unknown_names_are_refused(chapter):
    run_setup(chapter, {})  # the smoke profile as it is
    with pytest.raises(ValueError) as err:
        run_setup(chapter, {"seedz": [0]})
    message = str(err.value)
    assert message.startswith("seedz=[0] is not a parameter of") and "Did you mean 'seed" in message, message
    frames = traceback.extract_tb(err.value.__traceback__)
    assert any(f.filename.endswith("chapter.py") and f.name == "__init__" for f in frames), message


@pytest.mark.parametrize("profile", ["book", "paper"])
def test_book_and_paper_defaults_pass_their_rules(profile):
    from nlutils import data

    if not all(data.find(d) for d in ("mnist", "cifar10")):
        pytest.skip("the real data sets are not here (set NLUTILS_DATA)")
    for chapter in CHAPTERS:
        run_setup(chapter, {"device": "cpu"}, profile=profile)


def test_a_parameter_without_a_rule_is_a_programming_error():
    with pytest.raises(TypeError, match="no_rule"):
        profiles.resolve("book", {"book": dict(no_rule=3, epochs=2)})
    with pytest.raises(TypeError, match="profiles.Rule"):
        profiles.resolve("book", {"book": dict(epochs=2)}, checks={"epochs": lambda n, v: None})


# (chapter, parameter, value as `papermill -p` passes it): the cases readers met
READER_CASES = [
    ("massive_noise", "steps", 0),
    ("benchmark", "n_train", -5),
    ("elr", "lam_sym", -1),
    ("elr", "beta_asym", 1.5),
    ("loss_correction", "mnist_lr", -1),
    ("massive_noise", "models_", '["bogus"]'),
    ("massive_noise", "n_val", 100000),
    ("benchmark", "trusted_per_class", 100000),
    ("benchmark", "memo_methods", -1),
    ("benchmark", "memo_methods", 100),
    ("meta_reweight", "augment", 3),
    ("gradient_similarity", "k", 100000),
    ("massive_noise", "clean_sizes", "[100000]"),
    ("meta_reweight", "lr_milestones", 5),
    ("benchmark", "cleanlab_folds", 100000),
]


@pytest.mark.notebooks
@pytest.mark.parametrize("chapter,name,value", READER_CASES, ids=[f"{c}-{n}-{v}" for c, n, v in READER_CASES])
def test_reader_cases_fail_fast_through_papermill(chapter, name, value, tmp_path):
    import papermill as pm

    t0 = time.perf_counter()
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / f"{chapter}.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"profile": "smoke", name: value}, cwd=str(ROOT),
                            kernel_name="python3", progress_bar=False)
    assert time.perf_counter() - t0 < 60
    e = err.value
    assert e.ename == "ValueError", (e.ename, e.evalue)
    assert e.evalue.startswith((f"{name}=", f"{name}[")), e.evalue
    assert "Chapter(" in e.source, "must fail where the parameters are resolved, before training"
    assert not list(tmp_path.glob("**/*.npz"))


def test_strings_from_papermill_are_parsed():
    presets = {"book": dict(rates=[0.4], seeds=[0], epochs=3, lr=1e-3, dataset="mnist")}
    cfg = profiles.resolve("book", presets, rates="[0.2, 0.6]", seeds="[0, 1]", epochs="5",
                           lr="3e-4", dataset="digits")
    assert cfg == SimpleNamespace(profile="book", rates=[0.2, 0.6], seeds=[0, 1], epochs=5, lr=3e-4,
                                  dataset="digits")
    with pytest.raises(ValueError, match="seeds"):
        profiles.resolve("book", presets, seeds="abc")
    with pytest.raises(ValueError, match="epochs"):
        profiles.resolve("book", presets, epochs="five")
    with pytest.raises(ValueError, match="rates=7 must be a list"):
        profiles.resolve("book", presets, rates=7)


def test_name_patterns_and_chapter_rules():
    presets = {"book": dict(higher_seeds=[], ablation_epochs=8, conv_steps=10, blog_alpha=5, a=4.0,
                            lam_sym=3.0, beta_sym=0.7, mnist_lr=0.01, batch_size=8, k=4)}
    assert profiles.resolve("book", presets).higher_seeds == []  # empty means "skip"
    for name, value in [("higher_seeds", ["x"]), ("ablation_epochs", 0), ("conv_steps", -1),
                        ("blog_alpha", -1), ("a", -1), ("lam_sym", -1), ("beta_sym", 1.0), ("mnist_lr", 0)]:
        with pytest.raises(ValueError, match=rf"^{name}[=\[]"):
            profiles.resolve("book", presets, **{name: value})

    @profiles.rule(bad=[11])
    def even(name, v):
        if v % 2:
            raise ValueError(f"{name}={v} must be even")
    with pytest.raises(ValueError, match="conv_steps=11"):
        profiles.resolve("book", presets, checks={"conv_steps": even}, conv_steps=11)
    # a bound sees the other parameters, after every value passed its own rules
    with pytest.raises(ValueError, match="k=9 must be at most batch_size=8"):
        profiles.resolve("book", presets, checks={"k": profiles.at_most("batch_size")}, k=9)
    assert profiles.resolve("book", presets, checks={"k": profiles.at_most("batch_size")}, k=8).k == 8


def test_bounds_against_the_data():
    from nlutils import data

    presets = {"book": dict(dataset="digits", trusted_per_class=5, track_rows=0)}
    checks = {"trusted_per_class": profiles.fewer_than_class("dataset"), "track_rows": profiles.rows_of("dataset")}
    smallest, n = min(data.class_counts("digits")), sum(data.class_counts("digits"))
    assert profiles.resolve("book", presets, checks=checks, trusted_per_class=smallest - 1)
    with pytest.raises(ValueError, match=f"trusted_per_class={smallest} is too large.*{smallest} images"):
        profiles.resolve("book", presets, checks=checks, trusted_per_class=smallest)
    with pytest.raises(ValueError, match=f"track_rows={n} is too large"):
        profiles.resolve("book", presets, checks=checks, track_rows=n)


def test_injected_names_are_read_from_the_kernel_history():
    ns = {"_ih": ["", "x = 1", "# Parameters\nprofile = 'smoke'\nsteps = 0\n"], "steps": 0, "profile": "smoke"}
    assert profiles.injected(ns) == {"profile": "smoke", "steps": 0}
    assert profiles.injected({"_ih": ["", "x = 1"]}) == {}
    e = profiles.unknown_parameter("steps", 0, {"book": dict(seeds=[0], select_examples=1)}, "massive_noise")
    assert str(e).startswith("steps=0 is not a parameter of massive_noise") and "profile" in str(e)
