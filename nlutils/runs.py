"""Run records: every finished training run as a small file, keyed by what the run *is* and
by what the code *computes*.

A chapter asks for a run by its configuration, a JSON-able dict (setting, method and its
parameters, model, recipe, seed, ...). :meth:`RunStore.run` returns the stored record or
computes it, stores it and returns it. A record holds the run's metrics (a dict), its
per-epoch history (a DataFrame) and optional per-example arrays (noisiness scores, weights:
stored as float16 unless asked otherwise); never weights of a network.

The key is ``sha256(config, fingerprint)``. The *fingerprint* is not a hash of source text:
it is the hash of the exact bytes that a tiny **canary** computation produces, run through
the same code path as the real run (the same method hook, model family, precision,
augmentation) on a few synthetic images. So

* a refactor that leaves the numbers bitwise unchanged leaves the canary unchanged, and
  every stored record stays valid;
* a change of numerics changes the canary of every run that goes through the changed code,
  and exactly those records become stale (they are no longer found).

The canary runs on one CPU thread (:func:`run_canary`), so the fingerprint does not depend
on how many threads the run itself used.

The canary is supplied by the caller (``canary=``, a callable returning tensors or numbers,
and ``canary_name=``, which code path it stands for); :func:`nlutils.registry.canary` makes
one per method, model and recipe. A fingerprint is computed once per process and name.

Files: ``<directory>/<config["method"] or "run">/<key>.npz`` (``np.savez_compressed``;
``config`` and ``metrics`` as JSON strings, history columns and arrays as they are; a new
record is read back from its file, so a chapter sees the same numbers whether it just
computed a run or found it), committed with
the book so that a chapter's compute can be spread over days and machines. Set
``NLUTILS_TRAIN=off`` (or ``RunStore(train=False)``) to forbid training: a missing record
then raises :class:`MissingRun` (CI rebuilds the book that way). A long computation stops
between two runs, never inside one, when the stop file exists (``<directory>/STOP``, or the
file named by ``NLUTILS_STOP``): the next run that would have to be computed raises
:class:`Stopped` instead (stored records are still served), so that workers can be ended
before a deadline without losing work (``touch book/runs/STOP``; delete it to go on).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch


class MissingRun(RuntimeError):
    """A run that is not stored, while training is switched off."""


class Stopped(RuntimeError):
    """A run that is not stored, while the stop file exists."""


def stop_file(directory: Path) -> Path:
    """The file whose existence stops new runs: ``$NLUTILS_STOP``, else ``<directory>/STOP``."""
    return Path(os.environ.get("NLUTILS_STOP") or Path(directory) / "STOP")


@dataclass
class Record:
    config: dict
    metrics: dict
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0          # compute time of the run when it was made
    fingerprint: str = ""

    def __getitem__(self, name):
        return self.metrics[name]


def jsonable(obj: Any):
    """Plain JSON types (dict keys as strings; NaN/inf as None; tensors and numpy scalars
    as numbers or lists)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"{type(obj).__name__} is not part of a run configuration: {obj!r}")


def canonical(config: dict) -> str:
    return json.dumps(jsonable(config), sort_keys=True, separators=(",", ":"))


def digest(*values) -> str:
    """sha256 (16 hex) of tensors, arrays, numbers and strings, by their exact bytes."""
    h = hashlib.sha256()
    for v in values:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(v, np.ndarray):
            h.update(str(v.dtype).encode() + np.ascontiguousarray(v).tobytes())
        elif isinstance(v, (list, tuple)):
            h.update(digest(*v).encode())
        elif isinstance(v, dict):
            h.update(digest(*[(k, v[k]) for k in sorted(v)]).encode())
        elif isinstance(v, float):
            h.update(np.float64(v).tobytes())
        else:
            h.update(repr(v).encode())
    return h.hexdigest()[:16]


def run_canary(canary: Callable[[], Any]):
    """``canary()`` on one CPU thread, the global RNG state forked. Kernels split their sums
    by thread count (a two-step canary on two threads differs in its last bits from the same
    canary on one), so the fingerprint is computed on one thread: it then names the code
    path whatever the thread count of the run, and a record made by a one-thread worker
    serves a two-thread process (and CI) alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            return canary()
    finally:
        torch.set_num_threads(threads)


def runs_dir() -> Path | None:
    d = os.environ.get("NLUTILS_RUNS")
    return Path(d) if d else None


def training_allowed() -> bool:
    return os.environ.get("NLUTILS_TRAIN", "on") != "off"


class RunStore:
    """A folder of run records (see the module docstring).

    Example::

        store = RunStore("book/runs")
        rec = store.run(config, compute, fingerprint=canary)
        rec.metrics["test_acc"], rec.history, rec.arrays["score"]

    ``compute()`` returns ``(metrics, history, arrays)`` (history may be ``None``, arrays
    ``{}``). ``seconds`` adds up the compute time of the distinct runs served.
    """

    def __init__(self, directory=None, train: bool | None = None):
        directory = directory if directory is not None else runs_dir()
        if directory is None:
            raise ValueError("RunStore needs a folder (or NLUTILS_RUNS)")
        self.directory = Path(directory)
        self.train = training_allowed() if train is None else bool(train)
        self.hits = self.misses = 0
        self.seconds = 0.0
        self.used: dict[str, Path] = {}    # key -> file, for the chapter's record
        self._fp: dict[str, str] = {}

    def fingerprint(self, name: str, canary: Callable[[], Any] | None) -> str:
        """The canary's digest, computed once per ``name`` in this process."""
        if canary is None:
            return ""
        if name not in self._fp:
            self._fp[name] = digest(run_canary(canary))
        return self._fp[name]

    def key(self, config: dict, fingerprint: str = "") -> str:
        return hashlib.sha256((canonical(config) + "|" + fingerprint).encode()).hexdigest()[:16]

    def path(self, config: dict, fingerprint: str = "") -> Path:
        group = str(config.get("method", "run"))
        return self.directory / group / f"{self.key(config, fingerprint)}.npz"

    def get(self, config: dict, fingerprint: str = "") -> Record | None:
        p = self.path(config, fingerprint)
        if not p.is_file():
            return None
        try:
            return load(p)
        except Exception:  # a truncated file from a killed run: recompute it
            return None

    def run(self, config: dict, compute: Callable[[], tuple], *, canary: Callable | None = None,
            canary_name: str | None = None, float16: tuple[str, ...] | None = None) -> Record:
        """The stored record of ``config`` or a new one. ``canary``/``canary_name``: the
        fingerprint of the code path (see the module docstring). ``float16``: names of the
        arrays to store as float16 (default: every floating array)."""
        fp = self.fingerprint(canary_name or canonical(config), canary)
        rec = self.get(config, fp)
        p = self.path(config, fp)
        if rec is None and not self.train:
            raise MissingRun(f"no record for {canonical(config)} (fingerprint {fp!r}) in "
                             f"{self.directory}, and training is switched off")
        if rec is None:  # another worker may be computing it right now
            rec = self._wait_for_other(config, fp)
        if rec is None and stop_file(self.directory).exists():
            raise Stopped(f"not starting {canonical(config)}: {stop_file(self.directory)} exists")
        if rec is not None:
            self.hits += 1
        else:
            self.misses += 1
            with _Lock(p.with_suffix(".lock")):
                t0 = time.perf_counter()
                metrics, history, arrays = compute()
                seconds = time.perf_counter() - t0
                rec = Record(jsonable(config), jsonable(metrics),
                             history if history is not None else pd.DataFrame(),
                             {k: _compact(k, v, float16) for k, v in (arrays or {}).items()},
                             seconds, fp)
                save(rec, p)
            rec = load(p)  # the chapter always works from the record as stored
        key = self.key(config, fp)
        if key not in self.used:
            self.seconds += rec.seconds
            self.used[key] = p
        return rec


    def _wait_for_other(self, config: dict, fp: str, poll: float = 5.0) -> Record | None:
        """While another live process computes this run (its ``.lock`` file), wait for its
        record instead of computing it twice; ``None`` when nobody is computing it."""
        lock = self.path(config, fp).with_suffix(".lock")
        while _Lock.held(lock):
            time.sleep(poll)
        return self.get(config, fp)


class _Lock:
    """``<key>.lock`` holding the pid of the process computing a record, so that two
    workers filling one folder (``papermill ... -p seeds "[0]"`` beside ``-p seeds "[1]"``)
    never compute the same run twice; a lock whose process is gone is taken over."""

    def __init__(self, path: Path):
        self.path = path

    @staticmethod
    def held(path: Path) -> bool:
        try:
            pid = int(path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return False
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc):
        try:
            if self.path.read_text() == str(os.getpid()):
                self.path.unlink()
        except FileNotFoundError:
            pass
        return False


def _compact(name, v, float16):
    a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    if np.issubdtype(a.dtype, np.floating) and (float16 is None or name in float16):
        return a.astype(np.float16)
    return a


def save(rec: Record, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    cols = [str(c) for c in rec.history.columns]
    np.savez_compressed(buf, __config__=np.array(canonical(rec.config)),
                        __metrics__=np.array(json.dumps(jsonable(rec.metrics), sort_keys=True)),
                        __history__=np.array(json.dumps(cols)),
                        **{f"h_{c}": rec.history[c].to_numpy() for c in cols},
                        __meta__=np.array(json.dumps({"seconds": round(rec.seconds, 2),
                                                      "fingerprint": rec.fingerprint,
                                                      "torch": torch.__version__})),
                        **{f"a_{k}": v for k, v in rec.arrays.items()})
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path


def load(path: Path) -> Record:
    with np.load(path, allow_pickle=False) as z:
        config = json.loads(str(z["__config__"]))
        metrics = json.loads(str(z["__metrics__"]))
        cols = json.loads(str(z["__history__"]))
        history = pd.DataFrame({c: z[f"h_{c}"] for c in cols})
        meta = json.loads(str(z["__meta__"]))
        arrays = {k[2:]: z[k] for k in z.files if k.startswith("a_")}
    return Record(config, metrics, history, arrays, float(meta.get("seconds", 0.0)),
                  meta.get("fingerprint", ""))
