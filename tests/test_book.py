"""The book builds offline with warnings as errors, from the committed executed chapters."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _toc_files():
    import yaml
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def test_every_notebook_has_an_executed_copy_in_the_toc():
    toc = set(_toc_files())
    for src in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"book/{src.stem}" in toc, f"{src.name} is not in _toc.yml"
        executed = ROOT / "book" / src.name
        assert executed.exists(), f"book/{src.name} missing: run make book"
        meta = json.loads(executed.read_text())["metadata"].get("nlbook", {})
        assert meta.get("profile") == "book", f"book/{src.name} was not executed at profile=book"
        assert (ROOT / "book" / "results" / f"{src.stem}.json").exists()


def test_results_records_have_the_schema():
    for path in sorted((ROOT / "book" / "results").glob("*.json")):
        if path.name.count(".") > 1:
            continue  # smoke/paper records
        rec = json.loads(path.read_text())
        assert rec["chapter"] == path.stem and rec["profile"] == "book"
        assert {"parameters", "seeds", "git_commit", "torch_version"} <= set(rec["provenance"])
        assert rec["metrics"]


@pytest.mark.slow
def test_book_builds_with_warnings_as_errors(tmp_path):
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(jb), "build", str(ROOT), "--path-output", str(tmp_path), "-W", "-n",
                           "--keep-going"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    html = tmp_path / "_build" / "html"
    assert (html / "index.html").exists() or (html / "book" / "intro.html").exists()
    for f in _toc_files():
        assert (html / f"{f}.html").exists(), f"{f}.html not built"
