"""Which run records today's code still serves, and re-stamping them when only the canary
changed.

    python tools/rekey_runs.py --check [book/runs]         # list missing canaries and stale
                                                           # records (exit 1 if any)
    python tools/rekey_runs.py --restamp REF [book/runs]   # re-stamp stale records whose code
                                                           # path computes here, bit for bit,
                                                           # what it computed at git REF

A record is served while today's float64 canary of its code path agrees with the one stored
in it (:func:`nlutils.runs.agree`). Two kinds of change make it stale:

* a change of what training computes (a loss, a model, a default...): the record is stale
  for real; re-run the chapter (``tools/build_book.py --only NAME --all``) and commit the
  new records;
* a change of the canary alone (what it measures, e.g. one more array in it) or a refactor
  that renames functions seen by the precision trace: training computes what it did, but
  the stored canary no longer matches. ``--restamp REF`` (``REF``: a commit from before the
  change, e.g. ``HEAD`` while the change is uncommitted) checks each stale record's code
  path: its run at the recipe's precision for two steps (:func:`migrate_runs.old_digest`,
  the exact bytes) with the code at ``REF`` and with today's code, both on this machine;
  only where the bits are equal is today's canary written into the record. Bits are
  compared on one machine only, never across machines.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from nlutils import runs, setting  # noqa: E402
from nlutils.chapter import identify  # noqa: E402
from nlutils.recipe import Recipe  # noqa: E402


def identity(rec):
    c = rec.config
    return identify(setting.parse(c["setting"]), c["method"], model=c["model"], recipe=Recipe(**c["recipe"]),
                    seed=c["seed"], params=c["params"], model_args=c["model_args"], n_train=c["n_train"],
                    trusted_per_class=c["trusted_per_class"], val_fraction=c["val_fraction"],
                    track_train=c["track_train"])


def stale_records(directory: Path) -> list[tuple[Path, str]]:
    """``(file, why)`` for every record today's code would not serve."""
    store = runs.RunStore(directory, train=False)
    out = []
    for path in sorted(directory.glob("*/*.npz")):
        rec = runs.load(path)
        config, canary, name = identity(rec)
        if store.path(config) != path:
            out.append((path, f"not under its key ({store.path(config).name})"))
            continue
        ok, why = runs.agree(rec.canary, store.canary(name, canary))
        if not ok:
            out.append((path, why))
    return out


def check(directory: Path) -> int:
    bad = stale_records(directory)
    for path, why in bad:
        print(f"stale: {path.relative_to(directory)}: {why}")
    print(f"{len(bad)} of {len(list(directory.glob('*/*.npz')))} records stale")
    return 1 if bad else 0


def restamp(directory: Path, ref: str) -> int:
    import migrate_runs
    bad = [p for p, _ in stale_records(directory)]
    if not bad:
        print("nothing stale")
        return 0
    files = [str(p) for p in bad]
    wt = Path(tempfile.mkdtemp(prefix="nlutils-restamp-")) / "tree"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(wt), ref], cwd=ROOT, check=True)
    try:
        then = migrate_runs._digests(files, code=wt)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, check=True)
    now = migrate_runs._digests(files)
    store = runs.RunStore(directory, train=False)
    done = 0
    for f in files:
        if then[f] != now[f] or then[f].startswith("error"):
            print(f"left stale: {Path(f).relative_to(directory)} (its code path computes other bits "
                  f"than at {ref})")
            continue
        rec = runs.load(Path(f))
        config, canary, name = identity(rec)
        rec.canary = store.canary(name, canary)
        rec.provenance = {**rec.provenance, "restamped": f"same bits as at {ref} on "
                          + runs.describe_machine(runs.machine())}
        runs.save(rec, Path(f))
        done += 1
    print(f"{done} of {len(files)} stale records re-stamped")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--restamp" in args:
        i = args.index("--restamp")
        if i + 1 >= len(args):
            sys.exit("--restamp needs a git reference (e.g. HEAD)")
        ref = args[i + 1]
        rest = args[:i] + args[i + 2:]
        sys.exit(restamp(Path(rest[0] if rest else ROOT / "book" / "runs").resolve(), ref))
    rest = [a for a in args if a != "--check"]
    sys.exit(check(Path(rest[0] if rest else ROOT / "book" / "runs").resolve()))
