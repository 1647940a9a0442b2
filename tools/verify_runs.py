"""Re-train recorded runs on this machine and compare them with their records: the check of
portability that does travel (floating-point bits do not, see :mod:`nlutils.runs`).

    python tools/verify_runs.py                      # the default choice: 3 fast-CNN runs
                                                     # (CE and ELR) and 2 MLP runs
    python tools/verify_runs.py --n 2                # the first 2 of that choice
    python tools/verify_runs.py book/runs/ce/KEY.npz book/runs/elr/KEY.npz   # named records
    python tools/build_book.py --verify N            # the same, from the book's tool

For each record it rebuilds the problem from the stored configuration (setting, seed,
splits), trains the same method with the same model and recipe on this machine (the
configuration is the whole run: nothing else is read from the record), and reports per
metric the difference *re-run minus record* beside the seed-to-seed spread of the same
configuration (the standard deviation over the committed records that differ from it only
in the seed). A re-run whose |difference| is of the order of that spread reproduces the
record; one far outside it means the code or the data no longer computes what the record
says. The results are written to ``.cache/verify/<machine>.json`` (one file per processor
or GPU, the runs appended); with ``--book``, to ``book/runs/verify/<machine>.json``, the
files the foundations chapter reads (commit them, then re-execute the chapter). Training
uses the threads the process has; it never writes a run record.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nlutils import registry, runs, setting  # noqa: E402
from nlutils.recipe import Recipe  # noqa: E402

METRICS = ("acc_last", "acc_noisyval", "acc_besttest", "memorized_final")
# the default choice: short runs of both families, with other seeds of the same configuration
# committed (so that a spread exists): CE and ELR on the fast CNN (bf16), CE on two MLPs (fp32)
DEFAULT = [
    dict(method="ce", model="fastcnn", setting="cifar10_asym20", seed=1, augment="crop4+flip"),
    dict(method="ce", model="fastcnn", setting="cifar10_sym40", seed=2, augment="crop4+flip"),
    dict(method="elr", model="fastcnn", setting="cifar10_sym40", seed=2, augment="crop4+flip"),
    dict(method="ce", model="mlp", setting="mnist_sym40", seed=1),
    dict(method="ce", model="patrini_mnist", setting="mnist_asym40", seed=0),
]


def _matches(config: dict, want: dict) -> bool:
    return all((config["recipe"].get(k) if k == "augment" else config.get(k)) == v
               for k, v in want.items())


def default_records(directory: Path, n: int | None = None) -> list[Path]:
    """The records of :data:`DEFAULT`, in its order (the smallest file name when several
    configurations match, e.g. other parameters)."""
    found = []
    records = [(p, runs.load(p).config) for p in sorted(directory.glob("*/*.npz"))]
    for want in DEFAULT:
        hits = [p for p, c in records if _matches(c, want)]
        if hits:
            found.append(hits[0])
    return found[:n] if n else found


def seed_spread(directory: Path, config: dict) -> dict:
    """Per metric: (std over seeds, number of seeds) of the committed records of ``config``
    with any seed."""
    base = {k: v for k, v in config.items() if k != "seed"}
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    for p in sorted((directory / str(config["method"])).glob("*.npz")):
        rec = runs.load(p)
        if {k: v for k, v in rec.config.items() if k != "seed"} != base:
            continue
        for m in METRICS:
            if rec.metrics.get(m) is not None:
                values[m].append(float(rec.metrics[m]))
    return {m: (statistics.stdev(v) if len(v) > 1 else None, len(v)) for m, v in values.items()}


def retrain(rec: runs.Record, device: str = "cpu", progress: bool | None = None):
    """The run of ``rec.config``, trained again here: ``(metrics, seconds)``."""
    c = rec.config
    problem = setting.parse(c["setting"]).build(c["seed"], n_train=c["n_train"],
                                                trusted_per_class=c["trusted_per_class"],
                                                val_fraction=c["val_fraction"])
    t0 = time.perf_counter()
    metrics, _, _ = registry.run(problem, c["method"], model=c["model"], recipe=Recipe(**c["recipe"]),
                                 seed=c["seed"], params=c["params"], model_args=c["model_args"],
                                 device=device, progress=progress, track_train=c["track_train"])
    return metrics, time.perf_counter() - t0


def verify(paths: list[Path], directory: Path, out: Path | None = None, device: str = "cpu") -> list[dict]:
    """Re-train each record of ``paths``; returns (and appends to ``out``) one row per metric."""
    here = runs.machine(device)
    rows = []
    for path in paths:
        rec = runs.load(path)
        spread = seed_spread(directory, rec.config)
        metrics, seconds = retrain(rec, device)
        name = f"{rec.config['method']}/{runs.record_key(rec.config)}.npz"  # its key by configuration
        for m in METRICS:
            if rec.metrics.get(m) is None or metrics.get(m) is None:
                continue
            std, n = spread[m]
            rows.append({"record": name, "model": rec.config["model"], "method": rec.config["method"],
                         "setting": rec.config["setting"], "seed": rec.config["seed"],
                         "made_on": runs.describe_machine(rec.made_on), "rerun_on": runs.describe_machine(here),
                         "metric": m, "recorded": float(rec.metrics[m]), "rerun": float(metrics[m]),
                         "delta": float(metrics[m]) - float(rec.metrics[m]),
                         "seed_std": std, "n_seeds": n, "seconds": round(seconds, 1),
                         "recorded_seconds": round(rec.seconds, 1)})
            print(f"{name} {m}: record {rec.metrics[m]:.2f}, re-run {metrics[m]:.2f}, "
                  f"delta {metrics[m] - rec.metrics[m]:+.2f}"
                  + (f" (seed std {std:.2f} over {n} seeds)" if std is not None else ""), flush=True)
        if out is not None:  # after each record: a long verification keeps what it did
            _append(out, here, [r for r in rows if r["record"] == name])
    return rows


def _append(out: Path, here: dict, rows: list[dict]) -> None:
    old = json.loads(out.read_text()) if out.exists() else {"machine": here, "rows": []}
    keep = [r for r in old["rows"] if (r["record"], r["metric"]) not in {(x["record"], x["metric"]) for x in rows}]
    old["machine"] = here
    old["rows"] = keep + rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(old, indent=1) + "\n")


def output_file(directory: Path, device: str = "cpu") -> Path:
    """``<directory>/verify/<machine>.json``."""
    return directory / "verify" / f"{runs.machine_slug(runs.machine(device))}.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", nargs="*", type=Path, help="record files (default: the standard choice)")
    ap.add_argument("--n", type=int, default=None, help="only the first N of the standard choice")
    ap.add_argument("--runs", type=Path, default=ROOT / "book" / "runs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--book", action="store_true",
                    help="write to book/runs/verify/<machine>.json (the book's evidence)")
    ap.add_argument("--out", type=Path, default=None, help="results file (default: .cache/verify/<machine>.json)")
    a = ap.parse_args(argv)
    if a.n is not None and a.n < 1:
        ap.error(f"--n={a.n} must be >= 1")
    paths = [p.resolve() for p in a.records] or default_records(a.runs, a.n)
    for p in paths:
        if not p.is_file():
            ap.error(f"no record file {p}")
    out = a.out or output_file(a.runs if a.book else ROOT / ".cache", a.device)
    verify(paths, a.runs.resolve(), out, a.device)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
