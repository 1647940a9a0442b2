"""The book builds offline with warnings as errors, from the committed executed chapters."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_notebook_has_an_executed_copy_in_the_toc(toc_files):
    toc = set(toc_files)
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


def test_book_builds_with_warnings_as_errors(built_book, toc_files):
    assert (built_book / "index.html").exists()
    for f in toc_files:
        assert (built_book / f"{f}.html").exists(), f"{f}.html not built"
    # the landing page's table is generated from book/results at build time
    intro = (built_book / "book" / "intro.html").read_text()
    for path in sorted((ROOT / "book" / "results").glob("*.json")):
        if path.name.count(".") == 1:
            for h in json.loads(path.read_text()).get("headline", []):
                assert h["what"].split(",")[0].replace("&", "&amp;") in intro, h["what"]
    # maths is served from the site itself
    assert (built_book / "_static" / "mathjax" / "tex-svg.js").exists()
    assert "cdn.jsdelivr" not in intro
