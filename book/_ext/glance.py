"""Sphinx extension: build the landing page's "results at a glance" table from
book/results/*.json at build time (nothing typed in by hand).

Each chapter record may hold a ``claims`` list (``{"claim", "paper", "ours", "protocol",
"verdict", "source"}``, written by ``nlutils.chapter.Chapter.claim``) and a ``headline``
list of ``{"what", "ours", "reference", "source"}`` entries. The table goes to
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


def toc_order(toc: Path) -> dict:
    """``{chapter: position}`` in the book's table of contents (empty if it cannot be read)."""
    try:
        import yaml

        parts = yaml.safe_load(toc.read_text()).get("parts", [])
        files = [c["file"] for part in parts for c in part.get("chapters", [])]
        return {Path(f).name: i for i, f in enumerate(files)}
    except Exception:
        return {}


def is_stale(book: Path, chapter: str) -> bool:
    """The executed page carries the stale banner of ``tools/build_book.py --check``."""
    path = book / f"{chapter}.ipynb"
    return path.exists() and any("nlbook-stale-banner" in c.get("metadata", {}).get("tags", [])
                                 for c in json.loads(path.read_text())["cells"])


def _no_targets(reference):
    """Readers see the papers' numbers, not the project's internal targets: the parts of an
    older record's reference that state a goal are left out."""
    if not isinstance(reference, str):
        return reference
    kept = [p.strip() for p in reference.split(";") if "goal" not in p.lower()]
    return "; ".join(kept) or None


def render(results_dir: Path) -> str:
    """The claims ledger: per chapter, one row per claim of the paper or source, with the
    paper's number, ours (with the protocol that produced it) and the chapter's verdict.
    Chapters that record only ``headline`` rows show them with no verdict."""
    out = []
    order = toc_order(results_dir.parent.parent / "_toc.yml")
    paths = sorted(results_dir.glob("*.json"), key=lambda p: (order.get(p.stem, len(order)), p.stem))
    for path in paths:
        if path.name.count(".") > 1:  # smoke / paper records are not what the book shows
            continue
        rec = json.loads(path.read_text())
        chapter = rec["chapter"]
        rows = []
        for c in rec.get("claims") or []:
            src = f" ({c['source']})" if c.get("source") else ""
            rows.append(f"| {c['claim']}{src} | {_fmt(c.get('paper'))} | {_fmt(c.get('ours'))} "
                        f"<br><small>{c.get('protocol', '')}</small> | **{c['verdict']}** |")
        for h in rec.get("headline") or []:
            ref = _fmt(_no_targets(h.get("reference"))) + (f" ({h['source']})" if h.get("source") else "")
            rows.append(f"| {h['what']} | {ref} | {_fmt(h.get('ours'))} | – |")
        if rows:
            stale = " (page from an earlier version of the code: stale)" if is_stale(
                results_dir.parent, chapter) else ""
            out += [f"**{{doc}}`{title_of(results_dir.parent, chapter)} <{chapter}>`**{stale}", "",
                    "| claim | paper / source | ours | verdict |", "|---|---|---|---|", *rows, ""]
    if not out:
        out = ["No chapter has been executed yet."]
    return "\n".join(out) + "\n"


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
