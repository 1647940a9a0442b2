"""Move run records to the keys of the current fingerprint rule, without retraining.

    python tools/rekey_runs.py [book/runs]           # move records to the current keys
    python tools/rekey_runs.py --check [book/runs]   # list records the current code would not find

For a change of *how* a fingerprint is computed (not of what training computes), e.g. the
canary moving to one thread (:func:`nlutils.runs.run_canary`). For every record it rebuilds
the run's identity from the stored configuration (:func:`nlutils.chapter.identify`), checks
that the canary computed the *old* way (on this process's threads) still gives the stored
fingerprint, which proves that the training code is unchanged, and only then writes the
record under its new key (and deletes the old file). A record whose old fingerprint no longer
matches is stale for real and is left alone.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nlutils import runs, setting  # noqa: E402
from nlutils.chapter import identify  # noqa: E402
from nlutils.recipe import Recipe  # noqa: E402


def identity(rec):
    c = rec.config
    return identify(setting.parse(c["setting"]), c["method"], model=c["model"], recipe=Recipe(**c["recipe"]),
                    seed=c["seed"], params=c["params"], model_args=c["model_args"], n_train=c["n_train"],
                    trusted_per_class=c["trusted_per_class"], val_fraction=c["val_fraction"],
                    track_train=c["track_train"])


def check(directory: Path) -> int:
    """Every record found under the key the current code computes? (Exit 1 if not.)"""
    store = runs.RunStore(directory, train=False)
    stale = 0
    for path in sorted(directory.glob("*/*.npz")):
        config, canary, name = identity(runs.load(path))
        if store.path(config, store.fingerprint(name, canary)) != path:
            stale += 1
            print(f"stale: {path}")
    print(f"{stale} of {len(list(directory.glob('*/*.npz')))} records stale")
    return 1 if stale else 0


def main(directory: Path) -> int:
    store = runs.RunStore(directory, train=False)
    old_fp: dict[str, str] = {}
    moved = kept = stale = 0
    for path in sorted(directory.glob("*/*.npz")):
        rec = runs.load(path)
        config, canary, name = identity(rec)
        if runs.canonical(config) != runs.canonical(rec.config):
            print(f"{path}: configuration does not rebuild; left alone")
            stale += 1
            continue
        if name not in old_fp:
            with torch.random.fork_rng(devices=[]):
                old_fp[name] = runs.digest(canary())
        if old_fp[name] != rec.fingerprint:
            print(f"{path}: stale (its code path computes other numbers now); left alone")
            stale += 1
            continue
        fp = store.fingerprint(name, canary)
        new = store.path(config, fp)
        if new == path:
            kept += 1
            continue
        rec.fingerprint = fp
        runs.save(rec, new)
        path.unlink()
        moved += 1
    print(f"{moved} records re-keyed, {kept} already current, {stale} left alone")
    return 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--check"]
    folder = Path(args[0] if args else ROOT / "book" / "runs")
    sys.exit(check(folder) if "--check" in sys.argv[1:] else main(folder))
