"""The book builds offline with warnings as errors, from the committed executed chapters."""
import json
from pathlib import Path

import pytest

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


def _build_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "tools" / "build_book.py")
    bb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bb)
    return bb


def test_stale_banner_is_inserted_and_removed(tmp_path):
    bb = _build_tool()
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Title\n"]},
                    {"cell_type": "code", "metadata": {}, "source": ["x = 1"], "outputs": []}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "ch.ipynb"
    path.write_text(json.dumps(nb))
    bb.set_banner(path, "Its run records are missing.")
    cells = json.loads(path.read_text())["cells"]
    assert len(cells) == 3 and "".join(cells[1]["source"]).startswith(
        ":::{admonition} This page is stale\n:class: warning\n\n")  # a title, then the text
    bb.set_banner(path, "Its run records are missing.")  # idempotent
    assert len(json.loads(path.read_text())["cells"]) == 3
    bb.set_banner(path, None)
    assert json.loads(path.read_text())["cells"] == nb["cells"]


@pytest.mark.notebooks
def test_ci_rebuilds_every_chapter_from_its_run_records(tmp_path):
    """Every chapter re-executed at profile=book from book/runs with training off: the
    ported chapters reproduce their committed numbers (a number computed live, up to float64
    round-off); a chapter without records is
    listed as stale (and bannered), never recomputed. A tampered committed number is caught."""
    bb = _build_tool()
    pages = {p: p.read_bytes() for p in (ROOT / "book").glob("*.ipynb")}
    assert bb.run_check(banners=False) == 0
    assert {p: p.read_bytes() for p in pages} == pages, "the check must leave the committed pages as they are"
    # the check can fail: change one glued number in a copy of the committed page
    page = json.loads((ROOT / "book" / "foundations.ipynb").read_text())
    for c in page["cells"]:
        for o in c.get("outputs", []):
            if o.get("metadata", {}).get("scrapbook", {}).get("name") == "hi_final":
                o["data"] = {k: "0.0" for k in o["data"]}  # as myst-nb stores it
    tampered = tmp_path / "foundations.ipynb"
    tampered.write_text(json.dumps(page))
    status, detail = bb.check(ROOT / "notebooks" / "foundations.ipynb", tampered, tmp_path / "x")
    assert status == "differs" and "hi_final" in detail, detail


def test_check_forgives_round_off_only():
    """A live float64 computation may change in its last digits with the processor; a
    number a reader could see may not change at all."""
    bb = _build_tool()
    assert bb.same({"err": 1.93e-15, "acc": [80.48, 70.3]}, {"err": 4.16e-15, "acc": [80.48, 70.3]})
    assert bb.same({"r": 0.0032613233344775195}, {"r": 0.003261323334477557})
    assert not bb.same({"acc": 80.48}, {"acc": 80.4800001})
    assert not bb.same({"acc": 80.48}, {"acc": 80.48, "extra": 1})
    assert not bb.same({"n": 3}, {"n": 3.0}) and not bb.same(["a"], ["b"])
    # glued text: a number's repr may change in its last digits (threads, processor), words not
    assert bb.same(bb._number("0.0032613233344775195"), bb._number("0.003261323334477557"))
    assert not bb.same(bb._number("83.46"), bb._number("83.47"))
    assert not bb.same(bb._number("'sgd'"), bb._number("'adam'")) and bb.same(bb._number("nan"), bb._number("nan"))


def bare_outputs(page: Path) -> list[str]:
    """The outputs of an executed page that show a bare Python value: an ``execute_result``
    with nothing but ``text/plain`` (a quoted string, an unformatted float, a namespace),
    outside glue and outside cells tagged ``shows-value`` (meant to show one)."""
    found = []
    for i, c in enumerate(json.loads(page.read_text())["cells"]):
        if c["cell_type"] != "code" or "shows-value" in c.get("metadata", {}).get("tags", []):
            continue
        for o in c.get("outputs", []):
            data = o.get("data", {})
            if (o["output_type"] in ("execute_result", "display_data") and set(data) == {"text/plain"}
                    and not o.get("metadata", {}).get("scrapbook")):
                found.append(f"{page.name} cell {i}: {''.join(data['text/plain'])[:80]!r}")
    return found


def test_no_bare_values_on_the_pages(tmp_path):
    """On every fresh page; a page bannered stale shows an earlier version of its chapter
    until its records are there and it is re-executed."""
    bb = _build_tool()
    pages = [p for p in sorted((ROOT / "book").glob("*.ipynb"))
             if not any(bb.BANNER_TAG in c.get("metadata", {}).get("tags", [])
                        for c in json.loads(p.read_text())["cells"])]
    assert len(pages) >= 4, [p.name for p in pages]  # the test must not become vacuous
    bad = [b for p in pages for b in bare_outputs(p)]
    assert not bad, "bare values on the pages:\n" + "\n".join(bad)
    # the check can fail
    page = tmp_path / "x.ipynb"
    page.write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "source": "x", "outputs": [
        {"output_type": "execute_result", "data": {"text/plain": "'sym40'"}, "metadata": {}}]}]}))
    assert bare_outputs(page) == ["x.ipynb cell 0: \"'sym40'\""]
