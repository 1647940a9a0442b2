"""Execute the chapters that need it and report the stale ones.

    python tools/build_book.py            # execute only chapters whose book/ copy is missing
    python tools/build_book.py --all      # re-execute every chapter (make reproduce)
    python tools/build_book.py --only elr --profile smoke --out /tmp/x

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="re-execute every chapter")
    ap.add_argument("--only", nargs="*", help="chapter names (default: all in notebooks/)")
    ap.add_argument("--profile", default="book")
    ap.add_argument("--out", default=str(ROOT / "book"), help="folder for executed copies")
    args = ap.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
