"""Headline metrics with provenance, a per-run cache, and the chapter's reproduce box.

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

``RunCache`` stores one finished run per file, keyed by a hash of the run's full
configuration and of the nlutils modules that compute (not those that only record or
plot), so re-executing a notebook reuses what is done, an interrupted sweep loses nothing
already finished, and a change of the code a run used never serves stale numbers. It also
adds up the compute time of the runs it serves (``RunCache.seconds``).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import pickle
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

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
    return Path(os.environ.get("NLUTILS_RESULTS", REPO_ROOT / "book" / "results"))


def cache_dir() -> Path:
    return Path(os.environ.get("NLUTILS_CACHE", REPO_ROOT / ".cache" / "runs"))


def _git(*args) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except Exception:
        return None


def provenance(parameters: dict | None = None, seeds=None, run_seconds: float | None = None) -> dict:
    import torch

    from . import __version__

    dirty = _git("status", "--porcelain", "--untracked-files=no")
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
         claims: list[dict] | None = None, runs: list[str] | None = None) -> Path:
    """Write the chapter's record to :func:`result_path` and return the path. ``headline``:
    ``[{"what", "ours", "reference", "source"}]`` rows for the landing page's table;
    ``compute_seconds``: the compute time of the chapter's runs (``RunCache.seconds``), which
    stays meaningful when this execution was served from the cache."""
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


class RunCache:
    """A folder of finished runs, one pickle each, keyed by configuration.

    Example::

        cache = RunCache()
        result = cache.run({"method": "ce", "seed": 0, "epochs": 20}, lambda: train(...))

    ``result`` must be picklable (dicts, floats, DataFrames, tensors). The key covers the
    configuration (JSON, sorted) and the hash of the nlutils modules loaded when the cache
    is created (except :attr:`NOT_NUMERIC`), so a change to the code a run uses recomputes
    it. Set ``enabled=False`` (or ``NLUTILS_CACHE=off``) to always recompute.
    """

    #: modules that format, plot or record results and cannot change a run's numbers
    NOT_NUMERIC = ("__init__.py", "results.py", "plot.py", "profiles.py")

    def __init__(self, directory=None, enabled: bool | None = None):
        self.directory = Path(directory) if directory is not None else cache_dir()
        if enabled is None:
            enabled = os.environ.get("NLUTILS_CACHE", "") != "off"
        self.enabled = enabled
        self._code = source_hash({k: v for k, v in loaded_modules().items()
                                  if k not in self.NOT_NUMERIC})
        self.hits = 0
        self.misses = 0
        self.seconds = 0.0  # compute time of the distinct runs served, cached or not
        self._counted: set[str] = set()

    def key(self, config: dict) -> str:
        blob = json.dumps(_jsonable(config), sort_keys=True) + self._code
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def path(self, config: dict) -> Path:
        return self.directory / f"{self.key(config)}.pkl"

    def get(self, config: dict):
        p = self.path(config)
        if not (self.enabled and p.is_file()):
            return None
        try:
            with open(p, "rb") as f:
                stored = pickle.load(f)
        except Exception:  # a truncated file from a killed run: recompute it
            return None
        self._count(config, _compute_seconds(stored))
        return stored["result"]

    def _count(self, config: dict, seconds: float) -> None:
        key = self.key(config)
        if key not in self._counted:
            self._counted.add(key)
            self.seconds += seconds

    def put(self, config: dict, result, seconds: float | None = None) -> None:
        if not self.enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        p = self.path(config)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            pickle.dump({"config": _jsonable(config), "result": result, "seconds": seconds}, f)
        tmp.replace(p)

    def run(self, config: dict, fn: Callable[[], Any]):
        """The cached result for ``config``, or ``fn()`` computed, stored and returned."""
        hit = self.get(config)
        if hit is not None:
            self.hits += 1
            return hit
        if os.environ.get("NLUTILS_TRAIN", "on") == "off":
            from .runs import MissingRun
            raise MissingRun(f"run not cached and training is switched off: {config}")
        self.misses += 1
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        self._count(config, seconds)
        self.put(config, result, seconds)
        return result


def _compute_seconds(stored: dict) -> float:
    """A stored run's compute time; for runs stored without it, the training and evaluation
    seconds of its history (when it has one)."""
    if stored.get("seconds") is not None:
        return float(stored["seconds"])
    hist = stored["result"].get("history") if isinstance(stored["result"], dict) else None
    cols = [c for c in ("seconds", "eval_seconds") if hist is not None and c in hist]
    return float(hist[cols].to_numpy().sum()) if cols else 0.0


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
                  f"**{minutes:.1f} min** on the machine that executed it (2 CPU cores). "
                  f"Executed on {prov.get('date')}: commit `{commit}`{dirty}, nlutils "
                  f"{prov.get('nlutils_version')} (source `{prov.get('nlutils_source')}`), torch "
                  f"{prov.get('torch_version')}, seeds {prov.get('seeds')}. Its headline numbers "
                  f"are in `book/results/{chapter}.json`."]
    lines.append(":::")
    return Markdown("\n".join(lines))
