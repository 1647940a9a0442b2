"""Run records: every finished training run as a small file, keyed by what the run *is*,
and served only while the code still computes what made it.

A chapter asks for a run by its configuration, a JSON-able dict (setting, method and its
parameters, model, recipe, seed, ...). :meth:`RunStore.run` returns the stored record or
computes it, stores it and returns it. A record holds the run's metrics (a dict), its
per-epoch history (a DataFrame) and optional per-example arrays (noisiness scores, weights:
stored as float16 unless asked otherwise); never weights of a network.

**Identity: the configuration, nothing else.** The key is ``sha256(config)``
(:func:`record_key`): the same configuration gives the same key on every processor, kernel
set, thread count and device. Floating-point bits are not part of it: they are not portable
(vector width, AMX tiles and summation order change the last bits between processors, and
bf16 autocast moves a two-step canary by up to 1e-2 between kernel sets).

**Freshness: a canary compared by tolerance.** Beside its numbers, a record stores the
*canary* of its code path as it was when the run was made: a tiny run of the same code path
(method hook, model, recipe with its schedule, augmentation and precision) on synthetic
images, supplied by the caller (``canary=``; :func:`nlutils.registry.canary` makes one per
method, model and recipe). A stored record is served only if today's canary agrees with the
stored one (:func:`agree`):

* every floating value within :data:`RTOL` of the stored one, relative to the largest
  magnitude of its array (the registry's canary computes them in float64, where processors
  differ by ~1e-13: measured 6e-13 at most over the book's 272 code paths between AVX-512 +
  AMX, AVX-512 without AMX and AVX2 kernels). A code path whose own numerics amplify
  rounding declares a looser tolerance on its canary (``canary.rtol``, carried by
  :class:`Probe`): L2RW with an Adam virtual step, whose preconditioner weights each
  parameter by ``1/(sqrt(v)+eps)``, up to ``1/eps``, moves by up to 8e-6 between an Intel
  Xeon and an AMD EPYC (:data:`nlutils.registry.ADAM_META_RTOL`);
* every non-floating value (the registry's precision trace: which functions compute in
  bf16, a digest that does not depend on the processor) exactly equal, and the same names
  and shapes.

So a refactor that leaves the numbers unchanged keeps every record; a change of numerics (a
loss, a model, an initialisation, a schedule, an augmentation, a precision rule, a default
inside a module) moves the canary of every code path it touches far beyond RTOL, and exactly
those records become *stale*: not served (:class:`MissingRun` with training off, retrained
and overwritten with training on). Changing numerics on purpose: run the affected chapters
again (``tools/build_book.py --check`` lists them; ``--only NAME --all`` or ``make
reproduce``) and commit the new records. Changing only the canary itself (what it measures,
not what training computes): re-stamp the records with ``tools/rekey_runs.py --restamp REF``,
which keeps a record only where the code at ``REF`` and today's code compute bit-identical
runs on the machine that checks (bits are compared on one machine only, never across).

The canary runs on one CPU thread with the global RNG forked (:func:`run_canary`), on the
CPU whatever device the run uses; it is computed once per process and code path.

Each record also states where it was made (``made_on``: processor, kernel set, threads,
torch version, device, date; :func:`machine`). Whether a run *reproduces* on another
machine is a question of re-training, not of bits: ``tools/verify_runs.py`` re-trains
recorded runs and compares them with the seed-to-seed spread.

Files: ``<directory>/<config["method"] or "run">/<key>.npz`` (``np.savez_compressed``;
``config`` and ``metrics`` as JSON strings, history columns and arrays as they are, the
canary as ``c_*`` arrays; a new record is read back from its file, so a chapter sees the
same numbers whether it just computed a run or found it), committed with the book so that a
chapter's compute can be spread over days and machines. Set ``NLUTILS_TRAIN=off`` (or
``RunStore(train=False)``) to forbid training: a missing or stale record then raises
:class:`MissingRun` (CI rebuilds the book that way). A long computation stops between two
runs, never inside one, when the stop file exists (``<directory>/STOP``, or the file named
by ``NLUTILS_STOP``): the next run that would have to be computed raises :class:`Stopped`
instead (stored records are still served), so that workers can be ended before a deadline
without losing work (``touch book/runs/STOP``; delete it to go on).
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


class Busy(RuntimeError):
    """A run another live process is computing, in a store told not to wait (``on_busy="skip"``)."""


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
    canary: dict = field(default_factory=dict)   # its code path's canary (:func:`probe`)
    made_on: dict = field(default_factory=dict)  # where it was made (:func:`machine`)
    provenance: dict = field(default_factory=dict)  # e.g. how a migrated record was checked

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


RTOL = 1e-9
"""A canary value agrees with the stored one when ``|now - stored| <= RTOL * max|stored|``
over its array (float64 canaries differ by <= 6e-13 between processors; see the module
docstring)."""


def probe(out) -> dict:
    """A canary's output as ``{name: value}``: floating tensors and arrays as float64
    numpy arrays, floats as 0-d arrays, anything else (strings, integers, integer
    tensors) as its exact text. A dict keeps its names (``values`` is unpacked); a list is
    named by position."""
    flat: dict = {}

    def walk(name, v):
        if isinstance(v, dict):
            for k in sorted(v):
                walk(k if name in ("", "values") else f"{name}.{k}", v[k])
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(f"{name}.{i}" if name else str(i), x)
        elif isinstance(v, pd.DataFrame):
            walk(name, v.to_numpy())
        elif isinstance(v, (torch.Tensor, np.ndarray, float, np.floating)) and \
                np.issubdtype(np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v).dtype,
                              np.floating):
            a = v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, np.float64)
            flat[name] = a
        elif isinstance(v, (torch.Tensor, np.ndarray)):
            a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
            flat[name] = f"{a.dtype}{a.shape}:" + hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
        else:
            flat[name] = v if isinstance(v, str) else repr(v)
    walk("", out)
    return flat


class Probe(dict):
    """Today's canary of one code path (a :func:`probe`) with the tolerance it is compared at:
    :data:`RTOL`, or the looser one its canary declares (``canary.rtol``)."""
    rtol: float = RTOL


def agree(stored: dict, now: dict, rtol: float | None = None) -> tuple[bool, str]:
    """Does today's canary (``now``, a :func:`probe`) agree with a record's (``stored``)?
    ``(True, "")`` or ``(False, the first difference in words)``. ``rtol``: default the
    tolerance ``now`` carries (a :class:`Probe`), else :data:`RTOL`."""
    rtol = getattr(now, "rtol", RTOL) if rtol is None else rtol
    if not stored:
        return False, "the record holds no canary"
    if set(stored) != set(now):
        return False, f"the canary's parts changed ({sorted(set(stored) ^ set(now))})"
    for k in sorted(stored):
        a, b = stored[k], now[k]
        if isinstance(a, str) or isinstance(b, str):
            if a != b:
                return False, f"{k} differs ({a!r} recorded, {b!r} now)"
            continue
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return False, f"{k} has shape {b.shape}, recorded {a.shape}"
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return False, f"{k}: NaN where the record has a number, or the reverse"
        ok = ~np.isnan(a)
        if not ok.any():
            continue
        scale = float(np.abs(a[ok]).max())
        diff = float(np.abs(a[ok] - b[ok]).max())
        if diff > rtol * scale or not np.isfinite(diff):
            return False, f"{k} moved by {diff / max(scale, 1e-300):.1e} of its scale (tolerance {rtol:g})"
    return True, ""


def _cpu() -> tuple[str, list[str]]:
    """The processor's model name and the CPU flags that choose kernels (AVX-512, bf16, AMX)."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if not model:
        import platform
        model = platform.processor() or platform.machine()
    return model, sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile",
                                  "avx_vnni", "avx512_vnni", "fma", "neon", "asimd"})


def machine(device="cpu") -> dict:
    """Where a run is being made: processor model and the kernel set torch uses on it
    (ATen's vector width, oneDNN's and MKL's instruction caps when set, the CPU flags that
    choose kernels: AVX-512, bf16, AMX), threads, torch version, device (a GPU's name), date."""
    dev = torch.device(device)
    processor, flags = _cpu()
    out = {"processor": processor, "cpu_flags": flags,
           "aten_kernels": torch.backends.cpu.get_cpu_capability(),
           "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "all",
           "mkl_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS") or "all",
           "threads": torch.get_num_threads(), "torch": torch.__version__, "device": dev.type,
           "date": time.strftime("%Y-%m-%d", time.gmtime())}
    if dev.type == "cuda" and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


def describe_machine(m: dict | None) -> str:
    """One line for a reader, e.g. ``'Intel(R) Xeon(R) Processor (AVX512 + AMX, 2 threads),
    torch 2.14.1'``; for a record migrated from the bitwise rule, what its bits tell."""
    if not m:
        return "not recorded"
    if m.get("gpu"):
        where = m["gpu"]
    elif m.get("processor"):
        flags = m.get("cpu_flags") or []
        kernels = str(m.get("aten_kernels") or "?")
        if "amx_bf16" in flags and m.get("onednn_max_isa", "all") == "all":
            kernels += " + AMX"
        if m.get("onednn_max_isa", "all") != "all":
            kernels += f", oneDNN capped at {m['onednn_max_isa']}"
        where = f"{m['processor']} ({kernels}" + (f", {m['threads']} threads)" if m.get("threads") else ")")
    else:
        where = "processor not recorded"
    if m.get("inferred") and m["inferred"] != "processor not recorded":
        where += f"; {m['inferred']}"
    return where + (f", torch {m['torch']}" if m.get("torch") else "")


def machine_slug(m: dict) -> str:
    """A file name for a machine: processor (or GPU) and kernel set."""
    import re
    name = m.get("gpu") or f"{m.get('processor', 'cpu')}-{m.get('aten_kernels', '')}" + (
        "-amx" if "amx_bf16" in (m.get("cpu_flags") or []) and m.get("onednn_max_isa", "all") == "all" else "") + (
        f"-onednn-{m['onednn_max_isa']}" if m.get("onednn_max_isa", "all") != "all" else "")
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_canary(canary: Callable[[], Any]):
    """``canary()`` on one CPU thread, the global RNG state forked: the same process state
    before and after, and one summation order per kernel (a tolerance covers the rest)."""
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


def verification(directory) -> pd.DataFrame:
    """The re-trainings of ``tools/verify_runs.py`` stored under ``<directory>/verify/*.json``
    (one row per record and metric: recorded, rerun, delta, seed_std, rerun_on, ...), with
    ``made_on`` read from each record as it is now."""
    directory = Path(directory)
    rows = [row for f in sorted((directory / "verify").glob("*.json"))
            for row in json.loads(f.read_text())["rows"]]
    df = pd.DataFrame(rows)
    if len(df):
        df["made_on"] = [describe_machine(load(directory / r).made_on) for r in df["record"]]
    return df


def record_key(config: dict) -> str:
    """A record's key: sha256 (16 hex) of the canonical configuration, nothing else."""
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


class RunStore:
    """A folder of run records (see the module docstring).

    Example::

        store = RunStore("book/runs")
        rec = store.run(config, compute, canary=canary, canary_name="ce/mlp")
        rec.metrics["test_acc"], rec.history, rec.arrays["score"]

    ``compute()`` returns ``(metrics, history, arrays)`` (history may be ``None``, arrays
    ``{}``). ``seconds`` adds up the compute time of the distinct runs served.
    """

    def __init__(self, directory=None, train: bool | None = None, on_busy: str = "wait"):
        directory = directory if directory is not None else runs_dir()
        if directory is None:
            raise ValueError("RunStore needs a folder (or NLUTILS_RUNS)")
        if on_busy not in ("wait", "skip"):
            raise ValueError(f"on_busy={on_busy!r}: 'wait' (for another process's run) or 'skip' (raise Busy)")
        self.directory = Path(directory)
        self.train = training_allowed() if train is None else bool(train)
        self.on_busy = on_busy  # a worker sharing a job list with others sets "skip"
        self.hits = self.misses = 0
        self.seconds = 0.0
        self.used: dict[str, Path] = {}    # key -> file, for the chapter's record
        self.machines: dict[str, str] = {}  # key -> where it was made (describe_machine)
        self._probes: dict[str, dict] = {}

    def canary(self, name: str, canary: Callable[[], Any] | None) -> dict:
        """Today's canary of the code path ``name`` (a :class:`Probe` of :func:`run_canary`,
        with the tolerance the canary declares), computed once per process; ``{}`` without
        a canary."""
        if canary is None:
            return {}
        if name not in self._probes:
            self._probes[name] = Probe(probe(run_canary(canary)))
            self._probes[name].rtol = getattr(canary, "rtol", RTOL)
        return self._probes[name]

    def key(self, config: dict) -> str:
        return record_key(config)

    def path(self, config: dict) -> Path:
        group = str(config.get("method", "run"))
        return self.directory / group / f"{self.key(config)}.npz"

    def lookup(self, config: dict, now: dict | None = None) -> tuple[Record | None, str]:
        """``(record, "")`` when stored and fresh; ``(None, why)`` when missing or stale.
        ``now``: today's canary of the run's code path (``{}`` or ``None``: no check)."""
        p = self.path(config)
        if not p.is_file():
            return None, "missing"
        try:
            rec = load(p)
        except Exception:  # a truncated file from a killed run: recompute it
            return None, "unreadable"
        if now:
            ok, why = agree(rec.canary, now)
            if not ok:
                return None, f"stale: {why}"
        return rec, ""

    def get(self, config: dict, now: dict | None = None) -> Record | None:
        return self.lookup(config, now)[0]

    def run(self, config: dict, compute: Callable[[], tuple], *, canary: Callable | None = None,
            canary_name: str | None = None, float16: tuple[str, ...] | None = None,
            device="cpu") -> Record:
        """The stored record of ``config`` or a new one. ``canary``/``canary_name``: the
        code path's canary and its name (see the module docstring). ``float16``: names of the
        arrays to store as float16 (default: every floating array). ``device``: where
        ``compute`` trains (stated in the record's ``made_on``)."""
        now = self.canary(canary_name or canonical(config), canary)
        rec, why = self.lookup(config, now)
        p = self.path(config)
        if rec is None and not self.train:
            raise MissingRun(f"no {'fresh ' if why.startswith('stale') else ''}record for "
                             f"{canonical(config)} in {self.directory} ({why}: {p.name}), "
                             "and training is switched off")
        if rec is None:  # another worker may be computing it right now
            rec = self._wait_for_other(config, now)
        if rec is None and stop_file(self.directory).exists():
            raise Stopped(f"not starting {canonical(config)}: {stop_file(self.directory)} exists")
        lock = _Lock(p.with_suffix(".lock"))
        while rec is None and not lock.take():  # lost a race for the lock to another process
            rec = self._wait_for_other(config, now) or self.get(config, now)
        if rec is None and (rec := self.get(config, now)) is not None:
            lock.release()  # another process finished it just before this one took the lock
        if rec is not None:
            self.hits += 1
        else:
            self.misses += 1
            with lock:
                where = machine(device)
                t0 = time.perf_counter()
                metrics, history, arrays = compute()
                seconds = time.perf_counter() - t0
                rec = Record(jsonable(config), jsonable(metrics),
                             history if history is not None else pd.DataFrame(),
                             {k: _compact(k, v, float16) for k, v in (arrays or {}).items()},
                             seconds, now, where)
                save(rec, p)
            rec = load(p)  # the chapter always works from the record as stored
        key = self.key(config)
        if key not in self.used:
            self.seconds += rec.seconds
            self.used[key] = p
            self.machines[key] = describe_machine(rec.made_on)
        return rec

    def _wait_for_other(self, config: dict, now: dict | None, poll: float = 5.0) -> Record | None:
        """While another live process computes this run (its ``.lock`` file), wait for its
        record instead of computing it twice; ``None`` when nobody is computing it."""
        lock = self.path(config).with_suffix(".lock")
        if not _Lock.held(lock):
            return None
        if self.on_busy == "skip":
            raise Busy(f"{canonical(config)} is being computed by process {lock.read_text().strip()}")
        while _Lock.held(lock):
            time.sleep(poll)
        return self.get(config, now)


class _Lock:
    """``<key>.lock`` holding the pid of the process computing a record, so that two
    workers filling one folder (``papermill ... -p seeds "[0]"`` beside ``-p seeds "[1]"``)
    never compute the same run twice; a lock whose process is gone is taken over. Taking it
    is atomic (a hard link of a file that already holds the pid), so two workers that reach
    one run at the same moment cannot both compute it."""

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

    def take(self) -> bool:
        """Hold the lock; ``False`` when another live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        tmp.write_text(str(os.getpid()))
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    return True
                except FileExistsError:
                    if self.held(self.path):
                        return False
                    self.path.unlink(missing_ok=True)  # left by a process that is gone
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def release(self):
        try:
            if self.path.read_text() == str(os.getpid()):
                self.path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self):  # a lock not taken yet is taken here
        if self.path.is_file() and self.path.read_text() == str(os.getpid()):
            return self
        if not self.take():
            raise Busy(f"{self.path} is held by another process")
        return self

    def __exit__(self, *exc):
        self.release()
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
    floats = {k: v for k, v in rec.canary.items() if not isinstance(v, str)}
    exact = {k: v for k, v in rec.canary.items() if isinstance(v, str)}
    names = sorted(floats)
    np.savez_compressed(buf, __config__=np.array(canonical(rec.config)),
                        __metrics__=np.array(json.dumps(jsonable(rec.metrics), sort_keys=True)),
                        __history__=np.array(json.dumps(cols)),
                        **{f"h_{c}": rec.history[c].to_numpy() for c in cols},
                        __meta__=np.array(json.dumps({
                            "seconds": round(rec.seconds, 2), "torch": torch.__version__,
                            "made_on": jsonable(rec.made_on), "provenance": jsonable(rec.provenance),
                            "canary": {"rule": 2, "floats": names, "exact": exact}}, sort_keys=True)),
                        **{f"a_{k}": v for k, v in rec.arrays.items()},
                        **{f"c_{i}": np.asarray(floats[k], np.float64) for i, k in enumerate(names)})
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
        c = meta.get("canary") or {}
        canary = {**{k: z[f"c_{i}"] for i, k in enumerate(c.get("floats", []))}, **c.get("exact", {})}
    made_on = meta.get("made_on") or {}
    if not made_on and meta.get("torch"):
        made_on = {"torch": meta["torch"]}
    provenance = meta.get("provenance") or {}
    if meta.get("fingerprint"):  # a record of the bitwise rule (before 2026-12-05)
        provenance = {**provenance, "fingerprint": meta["fingerprint"]}
    return Record(config, metrics, history, arrays, float(meta.get("seconds", 0.0)), canary,
                  made_on, provenance)
