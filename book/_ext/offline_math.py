"""Sphinx extension: typeset maths without a CDN.

Serves MathJax 3 from the files of the PyPI package ``sphinx-mathjax-offline`` (copied to
``_static/mathjax`` of the built site) and uses its SVG output, which needs no web fonts, so
every page reads offline. (The package cannot be loaded as an extension by name: its module
folder has hyphens.)
"""
from __future__ import annotations

from importlib.metadata import distribution
from pathlib import Path

from sphinx.util.fileutil import copy_asset

ENTRY = "mathjax/tex-svg.js"


def _source() -> Path:
    return Path(distribution("sphinx-mathjax-offline").locate_file("sphinx-mathjax-offline/static/mathjax"))


def _configure(app, config):
    config.mathjax_path = ENTRY


def _copy(app, exc):
    if exc is None and app.builder.format == "html":
        copy_asset(str(_source()), str(Path(app.outdir) / "_static" / "mathjax"))


def setup(app):
    if not (_source() / "tex-svg.js").exists():
        raise RuntimeError("sphinx-mathjax-offline is not installed: pip install -r requirements.txt")
    app.connect("config-inited", _configure)
    app.connect("build-finished", _copy)
    return {"version": "1.0", "parallel_read_safe": True}
