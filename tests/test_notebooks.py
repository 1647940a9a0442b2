"""Every chapter runs end to end at profile=smoke, within its time budget."""
import json
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BUDGET_S = {"benchmark": 90}  # seconds; 60 for every other chapter


def test_every_notebook_has_a_parameters_cell_and_no_outputs():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: exactly one cell must be tagged 'parameters'"
        assert "profile" in "".join(tagged[0]["source"]), f"{path.name}: no profile parameter"
        for c in nb["cells"]:
            assert not c.get("outputs"), f"{path.name}: source notebooks keep no outputs"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_smoke(path, tmp_path):
    import papermill as pm

    t0 = time.perf_counter()
    pm.execute_notebook(str(path), str(tmp_path / path.name), parameters={"profile": "smoke"},
                        cwd=str(ROOT), kernel_name="python3", progress_bar=False)
    seconds = time.perf_counter() - t0
    budget = BUDGET_S.get(path.stem, 60)
    assert seconds <= budget, f"{path.name} smoke took {seconds:.0f} s > {budget} s"
    record = json.loads((Path(os.environ["NLUTILS_RESULTS"]) / f"{path.stem}.smoke.json").read_text())
    assert record["profile"] == "smoke" and record["metrics"]


def test_bad_parameter_fails_before_training(tmp_path):
    import papermill as pm

    path = ROOT / "notebooks" / "foundations.ipynb"
    with pytest.raises(pm.PapermillExecutionError, match="rates"):
        pm.execute_notebook(str(path), str(tmp_path / "bad.ipynb"),
                            parameters={"profile": "smoke", "rates": [0.2, 1.3]},
                            cwd=str(ROOT), kernel_name="python3", progress_bar=False)


def test_text_sources_are_paired_and_in_sync():
    """Each chapter's source is a MyST markdown file (reviewed as a diff) paired by jupytext
    with the .ipynb that papermill runs; `make sync` regenerates the pair."""
    import jupytext

    for path in NOTEBOOKS:
        md = path.with_suffix(".md")
        assert md.exists(), f"{md.name} missing: run make sync"
        text = jupytext.read(md)
        nb = json.loads(path.read_text())

        def cells(cs):
            return [(c["cell_type"], c["source"] if isinstance(c["source"], str) else "".join(c["source"]),
                     sorted(c.get("metadata", {}).get("tags", []))) for c in cs]
        assert cells(text["cells"]) == cells(nb["cells"]), f"{path.stem}: .md and .ipynb differ (make sync)"


def test_code_cells_stay_short():
    """Heavy code lives in nlutils: no code cell over 25 lines (the parameters cell, one line
    per parameter, excepted), at most one in ten over 15 (lines that are not blank and not
    comments)."""
    sizes = {}
    for path in NOTEBOOKS:
        for i, c in enumerate(json.loads(path.read_text())["cells"]):
            if c["cell_type"] == "code":
                src = "".join(c["source"]).splitlines()
                sizes[(path.stem, i)] = sum(1 for l in src if l.strip() and not l.strip().startswith("#"))
    declarations = {(path.stem, i) for path in NOTEBOOKS for i, c in enumerate(json.loads(path.read_text())["cells"])
                    if "parameters" in c.get("metadata", {}).get("tags", [])}  # one line per parameter
    too_long = {k: n for k, n in sizes.items() if n > 25 and k not in declarations}
    assert not too_long, f"code cells over 25 lines: {too_long}"
    over_15 = sum(n > 15 for n in sizes.values())
    assert over_15 <= len(sizes) / 10, f"{over_15} of {len(sizes)} code cells are over 15 lines"
