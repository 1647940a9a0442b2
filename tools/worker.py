"""Compute chosen runs of a chapter in the background, so that two workers can share a machine.

A chapter executed by papermill trains its missing runs one after another, in the order of its
cells. To spread a chapter's compute over two one-thread workers (or over sessions), this tool
executes the chapter's cells as papermill would, up to and including the first cell that
contains ``--through``, and then evaluates each JOB, a Python expression in the chapter's
namespace that trains one run or finds its record::

    OMP_NUM_THREADS=1 NLUTILS_RESULTS=/tmp/a .venv/bin/python tools/worker.py benchmark \\
        --through "def t_hat" --let CHOSEN_L2RW='"sgd"' \\
        "run('ce', 'cifar10n_worse', 0)" "run('elr', 'cifar10n_worse', 0)" &

Records land in ``book/runs`` (each as soon as it is finished; commit them); a run another
worker is computing is waited for, never computed twice (``<key>.lock``); ``touch
book/runs/STOP`` ends a worker before its next run; ``--missing`` trains nothing and lists
the jobs that have no record yet.

Workers can share one list (``--jobs-file``, one job a line, ``#`` comments) as a queue:
with ``--share`` a worker skips a job whose run another worker is computing, goes on with
the next, and tries the skipped ones once more at the end::

    for w in 1 2; do OMP_NUM_THREADS=1 NLUTILS_RESULTS=/tmp/$w .venv/bin/python tools/worker.py \
        benchmark --through "def t_hat" --let CHOSEN_L2RW='"sgd"' \
        --jobs-file tools/jobs/benchmark.txt --share & sleep 20; done

Nothing here decides what a chapter shows: the chapter, executed afterwards, finds the
records by what they are.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def namespace(chapter: str, through: str, profile: str = "book", params: dict | None = None) -> dict:
    """The chapter's globals after its cells up to the first containing ``through``, with the
    parameters injected as papermill injects them (also in IPython's input history, where
    :class:`nlutils.chapter.Chapter` finds the names a reader passed)."""
    nb = json.loads((ROOT / "notebooks" / f"{chapter}.ipynb").read_text())
    code = [(c["metadata"].get("tags", []), "".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "code"]
    first = next(i for i, (tags, _) in enumerate(code) if "parameters" in tags)
    last = next((i for i, (_, src) in enumerate(code) if through in src), None)
    if last is None:
        raise SystemExit(f"--through {through!r}: no code cell of {chapter} contains it")
    injected = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in {"profile": profile, **(params or {})}.items())
    ns = {"__name__": "__main__", "_ih": ["", code[first][1], injected]}
    for i, (_, src) in enumerate(code[:last + 1]):
        exec("\n".join(line for line in src.splitlines() if not line.startswith(("%", "!"))), ns)
        if i == first:
            exec(injected, ns)
    return ns


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("chapter")
    ap.add_argument("jobs", nargs="*", help="Python expressions evaluated in the chapter's namespace")
    ap.add_argument("--jobs-file", type=Path, help="more jobs, one a line (# starts a comment)")
    ap.add_argument("--share", action="store_true",
                    help="skip a job another worker is computing; try the skipped ones again at the end")
    ap.add_argument("--through", required=True, help="text of the last code cell to execute first")
    ap.add_argument("--let", action="append", default=[], metavar="NAME=EXPR",
                    help="set a name after the cells (e.g. a choice a later cell makes)")
    ap.add_argument("--profile", default="book")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--missing", action="store_true",
                    help="train nothing: print which jobs have no record yet")
    a = ap.parse_intermixed_args(argv)  # jobs may follow the options
    if a.jobs_file:
        lines = (line.split("#", 1)[0].strip() for line in a.jobs_file.read_text().splitlines())
        a.jobs += [line for line in lines if line]
    if not a.jobs:
        ap.error("no jobs: give them as arguments or with --jobs-file")
    if a.missing:
        os.environ["NLUTILS_TRAIN"] = "off"
    import torch

    torch.set_num_threads(a.threads)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    ns = namespace(a.chapter, a.through, a.profile)
    for item in a.let:
        name, _, expr = item.partition("=")
        ns[name.strip()] = eval(expr, ns)
    from nlutils.runs import Busy, MissingRun, Stopped

    if a.share:
        ns["ch"].store.on_busy = "skip"
    missing, skipped, queue = [], [], list(a.jobs)
    for i, job in enumerate(queue):
        if i == len(a.jobs) and skipped:
            print(f"back to the {len(skipped)} skipped jobs", flush=True)
        t0, computed = time.perf_counter(), ns["ch"].store.misses
        try:
            out = eval(job, ns)
        except Busy:
            if i < len(a.jobs):
                skipped.append(job)
                queue.append(job)
            print(f"busy {job}: another worker computes it", flush=True)
            continue
        except MissingRun:
            if not a.missing:
                raise
            missing.append(job)
            continue
        except Stopped:
            print(f"stopped before {job} (the stop file exists)", flush=True)
            return 0
        verb = "done" if ns["ch"].store.misses > computed else "have"  # trained here, or found
        shown = {k: v for k, v in (getattr(out, "metrics", None) or {}).items()  # a run record's accuracies
                 if k.startswith(("acc_", "test_acc")) and isinstance(v, float)}
        print(f"{verb} {job} in {time.perf_counter() - t0:.0f} s", *(f"{k} {v:.2f}" for k, v in shown.items()),
              flush=True)
    if a.missing:
        print(f"{len(missing)} of {len(a.jobs)} jobs have no record:", *missing, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
