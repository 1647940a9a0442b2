"""Execute the chapters that need it, check the executed ones against their run records,
and mark the stale ones.

    python tools/build_book.py            # execute only chapters whose book/ copy is missing
    python tools/build_book.py --all      # re-execute every chapter (make reproduce)
    python tools/build_book.py --check    # CI: re-execute every chapter at profile=book from
                                          # book/runs with training switched off
    python tools/build_book.py --verify 5 # re-train 5 recorded runs here, compare with the
                                          # records and the seed spread (tools/verify_runs.py)
    python tools/build_book.py --only elr --profile smoke --out /tmp/x

``--check`` re-executes each chapter with ``NLUTILS_TRAIN=off`` into a temporary folder,
which redraws every figure and table from the committed run records. A chapter whose
records are missing or stale (a run would have to train) is listed as stale and its
committed page gets a visible banner; a chapter whose re-executed metrics or glued numbers
differ from the committed ``book/results/<chapter>.json`` and ``book/<chapter>.ipynb`` is an
error (exit status 1).

A source notebook ``notebooks/<name>.ipynb`` is executed with papermill into
``book/<name>.ipynb``. The executed copy records in its metadata (``nlbook``) a hash of the
source notebook's cells and of each nlutils module it imported, the profile, the
parameters and the wall time; a copy whose hashes differ from the current sources is
reported as *stale* (it still renders, but it no longer shows what the code does).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nlutils.results import PACKAGE_DIR, _git, file_hash  # noqa: E402


def notebook_hash(path: Path) -> str:
    """sha256 (16 hex) of the cell types, sources and tags: not of outputs or ids."""
    nb = json.loads(path.read_text())
    h = hashlib.sha256()
    for c in nb["cells"]:
        src = c["source"] if isinstance(c["source"], str) else "".join(c["source"])
        h.update(c["cell_type"].encode() + b"\0" + src.encode() + b"\0")
        h.update(",".join(c.get("metadata", {}).get("tags", [])).encode() + b"\0")
    return h.hexdigest()[:16]


def stale_reasons(src: Path, out: Path) -> list[str]:
    meta = json.loads(out.read_text()).get("metadata", {}).get("nlbook")
    if not meta:
        return ["no provenance recorded"]
    reasons = []
    if meta.get("notebook_source") != notebook_hash(src):
        reasons.append("its notebook changed")
    changed = []
    for name, digest in (meta.get("nlutils_modules") or {}).items():
        f = PACKAGE_DIR / name
        if not f.exists() or file_hash(f) != digest:
            changed.append(name)
    if changed:
        reasons.append(f"nlutils changed ({', '.join(changed)})")
    if not meta.get("nlutils_modules"):
        reasons.append("no record of the nlutils code it ran")
    if meta.get("profile") != "book":
        reasons.append(f"executed at profile={meta.get('profile')}")
    return reasons


def execute(src: Path, out: Path, profile: str, parameters: dict | None = None) -> float:
    import papermill as pm

    params = {"profile": profile, **(parameters or {})}
    env_before = os.environ.get("NLUTILS_PROGRESS")
    os.environ["NLUTILS_PROGRESS"] = "0"  # no progress-bar residue in the rendered book
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(src), str(out), parameters=params, cwd=str(ROOT),
                            kernel_name="python3", progress_bar=False)
    finally:
        if env_before is None:
            os.environ.pop("NLUTILS_PROGRESS", None)
        else:
            os.environ["NLUTILS_PROGRESS"] = env_before
    seconds = time.perf_counter() - t0
    nb = json.loads(out.read_text())
    # the nlutils modules the chapter imported, as recorded by nlutils.results.save
    record = ROOT / "book" / "results" / (f"{src.stem}.json" if profile == "book"
                                          else f"{src.stem}.{profile}.json")
    modules = {}
    if record.exists():
        modules = json.loads(record.read_text())["provenance"].get("nlutils_modules", {})
    nb["metadata"]["nlbook"] = {
        "notebook_source": notebook_hash(src), "nlutils_modules": modules,
        "profile": profile, "parameters": params, "seconds": round(seconds, 1),
        "git_commit": _git("rev-parse", "HEAD"),
        "executed": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return seconds


BANNER_TAG = "nlbook-stale-banner"


def set_banner(path: Path, reason: str | None) -> None:
    """Insert (``reason``) or remove (``None``) the stale-chapter banner of an executed page."""
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if BANNER_TAG not in c.get("metadata", {}).get("tags", [])]
    if reason:
        banner = {"cell_type": "markdown", "metadata": {"tags": [BANNER_TAG]}, "source": [
            ":::{admonition} This page is stale\n", ":class: warning\n", "\n",
            f"{reason} The figures and numbers below were made by an earlier version of the "
            "code; `make reproduce` (or the chapter's reproduce box) recomputes them.\n", ":::"]}
        at = 1 if cells and cells[0]["cell_type"] == "markdown" else 0
        cells.insert(at, banner)
    if cells != nb["cells"]:
        nb["cells"] = cells
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def glued(path: Path) -> dict:
    """``{name: text}`` of what a notebook glued for its prose: the plain text of a number
    or a string, the HTML of a glued table (pandas' random table ids made neutral)."""
    import re

    out = {}
    for c in json.loads(path.read_text())["cells"]:
        for o in c.get("outputs", []):
            name = o.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:  # myst-nb stores the value under its papermill.record mime type
                data = {k.rsplit("/", 2)[-2] + "/" + k.rsplit("/", 1)[-1]: "".join(v) if isinstance(v, list) else v
                        for k, v in o.get("data", {}).items()}
                html = data.get("text/html")
                out[name] = re.sub(r"T_[0-9a-f]{5}", "T_", html) if html else data.get("text/plain")
    return out


def same(a, b, rel: float = 1e-9, tiny: float = 1e-12) -> bool:
    """Equal up to float64 round-off. A number read from a run record is bitwise portable;
    one a chapter computes live (an agreement check in float64, say) is not: its last digits
    change with the processor's kernels and with the number of threads. Anything a reader
    could see differs by far more."""
    import math

    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rel, tiny) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, rel, tiny) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel, abs_tol=tiny) or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def _number(text):
    """A glued number's value (``same`` then forgives its round-off); other glued text as is."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def check(src: Path, committed: Path, tmp: Path) -> tuple[str, str]:
    """Re-execute ``src`` at profile=book from the run records, training off. Returns
    ``("ok" | "stale" | "differs", detail)``."""
    import papermill as pm

    results_tmp = tmp / "results"
    results_tmp.mkdir(parents=True, exist_ok=True)
    env = {"NLUTILS_TRAIN": "off", "NLUTILS_RESULTS": str(results_tmp), "NLUTILS_PROGRESS": "0",
           "NLUTILS_RUNS": str(ROOT / "book" / "runs")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    out = tmp / src.name
    try:
        pm.execute_notebook(str(src), str(out), parameters={"profile": "book"}, cwd=str(ROOT),
                            kernel_name="python3", progress_bar=False)
    except pm.PapermillExecutionError as e:
        if e.ename == "MissingRun":
            return "stale", f"a run record is missing or stale: {e.evalue[-300:]}"
        return "differs", f"re-execution failed: {e.ename}: {e.evalue}"
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    record = ROOT / "book" / "results" / f"{src.stem}.json"
    problems = []
    if record.exists():
        new = json.loads((results_tmp / f"{src.stem}.json").read_text())
        ref = json.loads(record.read_text())
        for key in ("metrics", "claims", "headline"):
            if not same(new.get(key), ref.get(key)):
                problems.append(f"book/results/{src.stem}.json {key}")
    else:
        problems.append(f"book/results/{src.stem}.json is missing")
    if committed.exists():
        a, b = glued(out), glued(committed)
        diff = sorted(k for k in set(a) | set(b) if not same(_number(a.get(k)), _number(b.get(k))))
        if diff:
            problems.append(f"glued numbers {diff[:8]}")
    return ("differs", "; ".join(problems)) if problems else ("ok", "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="re-execute every chapter")
    ap.add_argument("--only", nargs="*", help="chapter names (default: all in notebooks/)")
    ap.add_argument("--profile", default="book")
    ap.add_argument("--out", default=str(ROOT / "book"), help="folder for executed copies")
    ap.add_argument("--check", action="store_true",
                    help="re-execute every chapter from its run records, training off (CI)")
    ap.add_argument("--verify", type=int, metavar="N", default=None,
                    help="re-train N recorded runs on this machine and compare them with their "
                         "records and the seed spread (tools/verify_runs.py)")
    args = ap.parse_args(argv)
    if args.check:
        return run_check(args.only)
    if args.verify is not None:
        sys.path.insert(0, str(ROOT / "tools"))
        import verify_runs
        return verify_runs.main(["--n", str(args.verify)])

    sources = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.only:
        sources = [s for s in sources if s.stem in args.only]
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    stale = []
    for src in sources:
        out = outdir / src.name
        if args.all or not out.exists():
            print(f"executing {src.name} (profile={args.profile}) ...", flush=True)
            seconds = execute(src, out, args.profile)
            print(f"  done in {seconds:.0f} s -> {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
        else:
            reasons = stale_reasons(src, out)
            if reasons:
                stale.append(src.stem)
                print(f"STALE: book/{src.name}: {', '.join(reasons)}; `make reproduce` re-executes it")
    if stale:
        print(f"{len(stale)} stale chapter(s): {', '.join(stale)}")
    else:
        print("all executed chapters are up to date")
    return 0


def run_check(only=None, banners: bool = True) -> int:
    """Re-execute the chapters from their records (see the module docstring); with
    ``banners`` (the command line), mark the committed pages of stale chapters, else (the
    tests) leave every tracked file as it is."""
    import tempfile

    sources = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if only:
        sources = [s for s in sources if s.stem in only]
    failed, stale = [], []
    for src in sources:
        committed = ROOT / "book" / src.name
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            status, detail = check(src, committed, Path(tmp))
        print(f"{src.stem}: {status} ({time.perf_counter() - t0:.0f} s){': ' + detail if detail else ''}",
              flush=True)
        if status == "stale":
            stale.append(src.stem)
        elif status == "differs":
            failed.append(src.stem)
        if banners and committed.exists() and status != "differs":
            set_banner(committed, f"Its run records (`book/runs/`) are missing or no longer match "
                                  f"what the code computes." if status == "stale" else None)
    print(f"{len(stale)} stale chapter(s): {', '.join(stale) or '-'}; "
          f"{len(failed)} differing: {', '.join(failed) or '-'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
