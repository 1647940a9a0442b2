"""A chapter's record (metrics with provenance) and its reproduce box.

``save(chapter, metrics, ...)`` writes ``book/results/<chapter>.json`` (``<chapter>.<profile>
.json`` for the smoke and paper profiles)::

    {"chapter": ..., "profile": ...,
     "provenance": {"parameters", "seeds", "git_commit", "git_dirty", "nlutils_version",
                    "nlutils_source", "nlutils_modules": {file: hash}, "torch_version",
                    "run_seconds", "compute_seconds", "date"},
     "metrics": {...},
     "headline": [{"what", "ours", "reference", "source"}, ...]}

Accuracies are in percent, a mean over seeds is ``{"mean": m, "std": s, "n": k}``
(see :func:`mean_std`). ``headline`` rows feed the landing page's table.

The records go to the folder passed as ``directory`` or named by ``NLUTILS_RESULTS``; the
book's folder (``book/results``) is the chapter layer's choice (:mod:`nlutils.chapter`),
not this module's. Finished runs are kept by :mod:`nlutils.runs`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def file_hash(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# hashes of the package's files as they were when the package was imported, so that an
# edit made while a chapter runs is not mistaken for the code that chapter ran
_AT_IMPORT = {p.relative_to(PACKAGE_DIR).as_posix(): file_hash(p) for p in PACKAGE_DIR.rglob("*.py")}


def loaded_modules() -> dict[str, str]:
    """``{module file name: hash}`` of the nlutils modules imported in this process: the
    code a chapter actually ran (a new method module does not make other chapters stale)."""
    import sys

    out = {}
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if (name == "nlutils" or name.startswith("nlutils.")) and f and PACKAGE_DIR in Path(f).parents:
            rel = Path(f).resolve().relative_to(PACKAGE_DIR).as_posix()
            out[rel] = _AT_IMPORT.get(rel) or file_hash(f)
    return dict(sorted(out.items()))


def source_hash(modules: dict[str, str] | None = None) -> str:
    """One hash (16 hex) over ``{file: hash}`` (default: :func:`loaded_modules`)."""
    modules = loaded_modules() if modules is None else modules
    return hashlib.sha256(json.dumps(modules, sort_keys=True).encode()).hexdigest()[:16]


def results_dir() -> Path:
    """The folder named by ``NLUTILS_RESULTS`` (the chapter layer passes its own otherwise)."""
    d = os.environ.get("NLUTILS_RESULTS")
    if not d:
        raise ValueError("no results folder: pass directory= or set NLUTILS_RESULTS")
    return Path(d)


CODE_PATHS = ("nlutils", "notebooks", "tools", "requirements.txt", "Makefile")


def _git(*args) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except Exception:
        return None


def provenance(parameters: dict | None = None, seeds=None, run_seconds: float | None = None) -> dict:
    import torch

    from . import __version__

    # uncommitted changes to the code that computes a page; the page and its record, which the
    # execution itself is writing, are not among them
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    return {
        "parameters": _jsonable(parameters or {}),
        "seeds": _jsonable(list(seeds) if seeds is not None else None),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if dirty is None else bool(dirty),
        "nlutils_version": __version__,
        "nlutils_source": source_hash(),
        "nlutils_modules": loaded_modules(),
        "torch_version": torch.__version__,
        "run_seconds": None if run_seconds is None else round(float(run_seconds), 1),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def mean_std(values) -> dict:
    """``{"mean", "std", "n"}`` of a sequence (sample std, ddof=1; 0 for one value)."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_std of an empty sequence")
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "n": int(v.size)}


def fmt(ms: dict, digits: int = 2) -> str:
    """``"81.23 ± 0.45"`` from a :func:`mean_std` record."""
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"


def result_path(chapter: str, profile: str = "book", directory=None) -> Path:
    """``<dir>/<chapter>.json`` for the ``book`` profile, ``<dir>/<chapter>.<profile>.json``
    otherwise, so a smoke or paper run never overwrites what the book shows."""
    out = Path(directory) if directory is not None else results_dir()
    return out / (f"{chapter}.json" if profile == "book" else f"{chapter}.{profile}.json")


def save(chapter: str, metrics: dict, *, profile: str, parameters: dict | None = None,
         seeds=None, run_seconds: float | None = None, directory=None,
         headline: list[dict] | None = None, compute_seconds: float | None = None,
         claims: list[dict] | None = None, runs: list[str] | None = None,
         machines: dict | None = None) -> Path:
    """Write the chapter's record to :func:`result_path` and return the path. ``headline``:
    ``[{"what", "ours", "reference", "source"}]`` rows for the landing page's table;
    ``compute_seconds``: the compute time of the chapter's runs (``RunStore.seconds``), which
    stays meaningful when this execution was served from the run records; ``machines``:
    ``{where: number of runs}``, the machines that made the chapter's run records."""
    path = result_path(chapter, profile, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"chapter": chapter, "profile": profile,
              "provenance": dict(provenance(parameters, seeds, run_seconds),
                                 compute_seconds=None if compute_seconds is None
                                 else round(float(compute_seconds), 1)),
              "metrics": _jsonable(metrics), "headline": _jsonable(headline or [])}
    if claims is not None:
        record["claims"] = _jsonable(claims)
    if runs is not None:
        record["runs"] = list(runs)  # the run records (under book/runs) this page was made from
    if machines is not None:
        record["machines"] = dict(machines)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def load(chapter: str, profile: str = "book", directory=None) -> dict:
    return json.loads(result_path(chapter, profile, directory).read_text())


def _jsonable(obj: Any):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # 0-d tensors
        return _jsonable(obj.item())
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def reproduce_box(chapter: str, profiles=("smoke", "book", "paper"), directory=None):
    """A "Reproduce this chapter" admonition (MyST markdown) for the end of a chapter: the
    papermill command of every profile, the measured run time of this execution and the
    provenance recorded in the chapter's results file."""
    from IPython.display import Markdown

    rec = None
    for profile in ("book", *profiles):
        p = result_path(chapter, profile, directory)
        if p.exists():
            rec = json.loads(p.read_text())
            if rec.get("profile") in profiles:
                break
    lines = [":::{admonition} Reproduce this chapter", ":class: tip", "",
             "From the repository root, after `make setup`:", "", "```bash"]
    for profile in profiles:
        lines.append(f".venv/bin/papermill notebooks/{chapter}.ipynb /tmp/{chapter}.{profile}.ipynb "
                     f"-p profile {profile}")
    lines += ["```", ""]
    if rec is not None:
        prov = rec["provenance"]
        minutes = max(prov.get("run_seconds") or 0, prov.get("compute_seconds") or 0) / 60
        commit = (prov.get("git_commit") or "unknown")[:10]
        dirty = " (with uncommitted changes)" if prov.get("git_dirty") else ""
        lines += [f"This page was executed at profile `{rec['profile']}`; its runs take "
                  f"**{minutes:.1f} min** of compute (the time each run record states, on the "
                  f"machine that made it; 2 CPU cores). "
                  f"Executed on {prov.get('date')}: commit `{commit}`{dirty}, nlutils "
                  f"{prov.get('nlutils_version')} (source `{prov.get('nlutils_source')}`), torch "
                  f"{prov.get('torch_version')}, seeds {prov.get('seeds')}. Its headline numbers "
                  f"are in `book/results/{chapter}.json`."]
        if rec.get("machines"):
            n = sum(rec["machines"].values())
            lines += ["", f"Its {n} run record{'s' if n != 1 else ''} (`book/runs/`) were made on:", ""]
            lines += [f"- {where}: {k} run{'s' if k != 1 else ''}" for where, k in rec["machines"].items()]
            lines += ["", "Bits differ between machines; `tools/verify_runs.py` re-trains recorded "
                          "runs on yours and compares them with the seed-to-seed spread."]
    lines.append(":::")
    return Markdown("\n".join(lines))
