"""The paper profile is for a GPU and is not run here, but it is smoke-checked: every chapter
resolves its paper parameters, and its first run's code path (the paper's network and
recipe) trains for the two canary steps on synthetic images; then, with training switched
off, it stops at the first run record it lacks (MissingRun), before any real training."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# meta_reweight checks its meta-gradient against `higher` in float64 on the profile's network
# before its first run: with the paper's WRN-28-10 that alone takes minutes on a CPU
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb") if p.stem != "meta_reweight")


@pytest.mark.notebooks
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_paper_profile_resolves_and_reaches_its_first_run(chapter, tmp_path, monkeypatch):
    import papermill as pm

    monkeypatch.setenv("NLUTILS_TRAIN", "off")
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / f"{chapter}.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"profile": "paper", "device": "cpu"}, cwd=str(ROOT),
                            kernel_name="python3", progress_bar=False)
    assert err.value.ename == "MissingRun", (err.value.ename, err.value.evalue)
