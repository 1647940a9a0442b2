"""Sphinx extension: build the landing page's "results at a glance" table from
book/results/*.json at build time (nothing typed in by hand).

Each chapter record may hold a ``headline`` list of
``{"what", "ours", "reference", "source"}`` entries, written by the executed chapter
(``nlutils.results.save(..., headline=...)``). The table goes to
``book/_generated/glance.md``, which ``book/intro.md`` includes.
"""
from __future__ import annotations

import json
from pathlib import Path



def title_of(book: Path, chapter: str) -> str:
    """The first heading of the executed chapter (``book/<chapter>.ipynb``)."""
    path = book / f"{chapter}.ipynb"
    if path.exists():
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "markdown":
                src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
                for line in src.splitlines():
                    if line.startswith("# "):
                        return line[2:].strip()
    return chapter


def _fmt(v):
    if isinstance(v, dict) and "mean" in v:
        return f"{v['mean']:.2f} ± {v['std']:.2f}"
    if isinstance(v, float):
        return f"{v:.2f}"
    return "–" if v is None else str(v)


def render(results_dir: Path) -> str:
    rows = ["| chapter | what | ours | paper / source |", "|---|---|---|---|"]
    for path in sorted(results_dir.glob("*.json")):
        if path.name.count(".") > 1:  # smoke / paper records are not what the book shows
            continue
        rec = json.loads(path.read_text())
        chapter = rec["chapter"]
        title = title_of(results_dir.parent, chapter)
        for h in rec.get("headline", []):
            ref = _fmt(h.get("reference"))
            if h.get("source"):
                ref += f" ({h['source']})"
            rows.append(f"| {{doc}}`{title} <{chapter}>` | {h['what']} | {_fmt(h.get('ours'))} | {ref} |")
    if len(rows) == 2:
        rows.append("| – | no chapter has been executed yet | | |")
    return "\n".join(rows) + "\n"


def _generate(app):
    book = Path(app.srcdir) / "book"
    out = book / "_generated"
    out.mkdir(exist_ok=True)
    text = render(book / "results")
    target = out / "glance.md"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def setup(app):
    app.connect("builder-inited", _generate)
    return {"version": "1.0", "parallel_read_safe": True}
