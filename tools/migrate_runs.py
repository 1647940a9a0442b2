"""Move the run records of the bitwise rule (key = configuration + the sha256 of a canary's
exact bytes, before 2026-12-05) to the portable rule of :mod:`nlutils.runs` (key =
configuration; freshness = a float64 canary compared by tolerance), **without recomputing
any run**, and keep a record only on evidence that the code that made it computes what
today's code computes.

    python tools/migrate_runs.py [book/runs]          # migrate (writes book/runs/MIGRATION.json)
    python tools/migrate_runs.py --dry-run            # the evidence only
    python tools/migrate_runs.py --tidy               # rewrite the made_on notes (no numbers)

A record of the old rule stores its *fingerprint*: the digest of the exact bytes of the
old canary (a two-step run of its code path at the recipe's precision, on one thread) on
the machine that made it. Two kinds of evidence, tried in this order:

1. **Bits reproduced.** Today's code, run here with the kernel set of another processor
   imposed (oneDNN's and MKL's instruction caps, ATen's vector width: the same instructions
   and summation orders as an AVX-512-bf16 machine without AMX, or an AVX2 one), computes
   the old canary bit for bit equal to the stored fingerprint. The record was made by code
   that computes exactly what today's code computes (and on a machine with that kernel set).
2. **Code unchanged since the record was committed.** At the commit that added the record
   and at its parent, the old canary of its code path computed *with that commit's code*
   on this machine is bit for bit equal to the one today's code computes on this machine
   (bits compared on one machine only). The code did not move between the run and today.

A record with neither is dropped (listed in MIGRATION.json with the reason). A kept record
is written under its new key with today's float64 canary, ``made_on`` (what is known: the
torch version; the kernel sets that reproduce its bits; the date it was committed) and
``provenance`` (its old fingerprint and the evidence), and its old file is removed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# kernel sets imposed on this machine (evidence 1); names say what they stand for
KERNEL_SETS = {
    "this machine's default kernels": {},
    "AVX-512 + bf16 without AMX (oneDNN capped at AVX512_CORE_BF16)": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "AVX-512 + bf16 without AMX, MKL's SSE4.2 path (as MKL runs on AMD)": {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "MKL_ENABLE_INSTRUCTIONS": "AVX"},
    "AVX-512 + bf16 without AMX, MKL's AVX2 path": {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "AVX2 kernels (ATen avx2, oneDNN AVX2)": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}

# ----------------------------------------------------------------- the old canary (rule 1)
# Runs against whichever ``nlutils`` is importable (today's, or an old commit's worktree).
OLD_COLUMNS = ("loss", "train_acc", "train_acc_true", "memorized", "test_acc", "test_acc_tta", "val_acc")


def old_digest(config: dict) -> str:
    """The rule-1 fingerprint of ``config``'s code path: the old two-step canary at the
    recipe's precision, one thread, its exact bytes hashed."""
    import torch
    from nlutils import data, registry, runs, setting
    from nlutils.recipe import Recipe

    s = setting.parse(config["setting"])
    spec = data.SPECS[s.dataset]["train"]
    shape = (1, *spec[1:]) if len(spec) == 3 else (spec[3], spec[1], spec[2])
    K = len(data.SPECS[s.dataset]["classes"])
    copies = s.noise in ("massive", "massive_shift")
    recipe = Recipe(**config["recipe"])

    def compute():  # as registry.canary did then (this must also run against old commits' code)
        problem = registry.synthetic_problem(shape, K)
        if copies:
            g = torch.Generator().manual_seed(1)
            rows = problem.train
            problem.image = torch.cat([rows, rows])
            problem.row_labels = torch.cat([problem.labels.clean[rows],
                                            torch.randint(0, K, (len(rows),), generator=g)])
            problem.train = torch.arange(len(problem.image))
        short = dict(epochs=2, batch_size=32)
        if hasattr(recipe, "steps_per_epoch"):  # a field since 2026-12-02
            short["steps_per_epoch"] = None if recipe.steps_per_epoch is None else 1
        r = recipe.replace(**short)
        _, history, arrays = registry.run(problem, config["method"], model=config["model"], recipe=r,
                                          seed=0, params=config["params"],
                                          model_args=config["model_args"], progress=False)
        cols = [c for c in OLD_COLUMNS if c in history.columns]
        return [history[cols].to_numpy(), *[torch.as_tensor(arrays[k]) for k in ("score", "weight")
                                            if k in arrays]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            return runs.digest(compute())
    finally:
        torch.set_num_threads(threads)


def _path_of(config: dict) -> str:
    """One name per code path: the configuration without seed and splits, with the dataset
    (input shape, classes) and whether rows are Rolnick's copies."""
    from nlutils import setting
    s = setting.parse(config["setting"])
    return json.dumps({**{k: config[k] for k in ("method", "model", "model_args", "recipe", "params")},
                       "dataset": s.dataset, "noise": s.noise}, sort_keys=True)


def digests_main(files: list[str]) -> None:
    """Subprocess entry: ``{file: old digest}`` for ``files`` with the importable nlutils."""
    from nlutils import runs
    out, cache = {}, {}
    for f in files:
        try:
            config = runs.load(Path(f)).config
            name = _path_of(config)
            if name not in cache:
                cache[name] = old_digest(config)
            out[f] = cache[name]
        except Exception as e:  # noqa: BLE001 (an old commit that cannot run this path)
            out[f] = f"error: {type(e).__name__}: {e}"[:300]
    print(json.dumps(out))


def _digests(files: list[str], env: dict | None = None, code: Path = ROOT) -> dict:
    if not files:
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(files, fh)
    script = ("import sys, json; sys.path.insert(0, %r); sys.path.insert(1, %r); "
              "import migrate_runs; migrate_runs.digests_main(json.load(open(%r)))"
              % (str(code), str(ROOT / "tools"), fh.name))
    res = subprocess.run([sys.executable, "-c", script], cwd=code, env={**os.environ, **(env or {})},
                         capture_output=True, text=True)
    os.unlink(fh.name)
    if res.returncode:
        raise RuntimeError(f"digests at {code} failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _git(*args) -> str:
    return subprocess.check_output(["git", *args], cwd=ROOT, text=True).strip()


def added_at(directory: Path) -> dict[str, tuple[str, str]]:
    """``{file: (commit, date)}``: the commit that gave each record file its current name."""
    out = {}
    log = _git("log", "--name-status", "--format=COMMIT %H %cs", "--", str(directory.relative_to(ROOT)))
    commit = date = None
    for line in log.splitlines():
        if line.startswith("COMMIT "):
            _, commit, date = line.split()
        elif line[:1] in ("A", "R") and line.endswith(".npz"):
            out.setdefault(str(ROOT / line.split("\t")[-1]), (commit, date))
    return out


def inferred(kernel_sets: list[str]) -> str:
    """What the kernel sets that reproduce a record's bits tell about the machine that made
    it (the records of the bitwise rule did not state it)."""
    if not kernel_sets:
        return "processor not recorded"
    if not any(k.startswith("this machine") for k in kernel_sets):
        return "AVX-512 without AMX (e.g. AMD Zen 4/5), inferred: only kernel sets without AMX reproduce its bits"
    return "kernel set not inferable: its bits are the same with and without AMX"


def tidy(directory: Path) -> int:
    """Rewrite the ``made_on`` note of migrated records with :func:`inferred` and the
    canary's exact values as plain text (metadata only: no number of a run changes)."""
    sys.path.insert(0, str(ROOT))
    from nlutils import runs
    n = 0
    for p in sorted(directory.glob("*/*.npz")):
        rec = runs.load(p)
        if not rec.provenance.get("migrated"):
            continue
        ev = rec.provenance["evidence"]
        sets = rec.provenance.get("reproduced_by")
        if sets is None:
            sets = ev.split("bit for bit with ", 1)[1].split("; ") if "bit for bit with " in ev else []
        rec.provenance["reproduced_by"] = sets
        rec.made_on["inferred"] = inferred(sets)
        rec.canary = {k: (v[1:-1] if isinstance(v, str) and v[:1] == v[-1:] == "'" else v)
                      for k, v in rec.canary.items()}
        runs.save(rec, p)
        n += 1
    print(f"{n} migrated records tidied")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", nargs="?", type=Path, default=ROOT / "book" / "runs")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--tidy", action="store_true", help=tidy.__doc__.split(".")[0])
    a = ap.parse_args(argv)
    directory = a.directory.resolve()
    if a.tidy:
        return tidy(directory)
    sys.path.insert(0, str(ROOT))
    from nlutils import runs
    sys.path.insert(0, str(ROOT / "tools"))
    import rekey_runs

    old = {}
    for p in sorted(directory.glob("*/*.npz")):
        rec = runs.load(p)
        if rec.provenance.get("fingerprint") and not rec.canary:
            old[str(p)] = rec
    print(f"{len(old)} records of the bitwise rule", flush=True)
    evidence: dict[str, dict] = {f: {"reproduced_by": []} for f in old}
    # 1. bits reproduced by today's code under some kernel set
    todo = list(old)
    for name, env in KERNEL_SETS.items():
        got = _digests(todo, env)
        for f in todo:
            if got[f] == old[f].provenance["fingerprint"]:
                evidence[f]["reproduced_by"].append(name)
        print(f"{name}: {sum(name in evidence[f]['reproduced_by'] for f in old)} reproduced", flush=True)
    # a record reproduced by one kernel set may be by others too: ask them all about those
    # (the made_on note lists every kernel set that reproduces it) - cheap, paths are cached
    # 2. the rest: code unchanged between the commit that added the record and today
    rest = [f for f in old if not evidence[f]["reproduced_by"]]
    today = _digests(rest)
    adds = added_at(directory)
    by_commit: dict[str, list[str]] = {}
    for f in rest:
        by_commit.setdefault(adds.get(f, ("?", ""))[0], []).append(f)
    worktrees = Path(tempfile.mkdtemp(prefix="nlutils-migrate-"))
    for commit, files in sorted(by_commit.items()):
        if commit == "?":
            continue
        checks = {}
        for label, ref in (("added", commit), ("parent", f"{commit}^")):
            wt = worktrees / f"{label}-{commit[:10]}"
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(wt), ref], cwd=ROOT, check=True)
            try:
                checks[label] = _digests(files, code=wt)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, check=True)
        for f in files:
            evidence[f]["added_at"] = commit
            evidence[f]["same_at_commit"] = checks["added"][f] == today[f]
            evidence[f]["same_at_parent"] = checks["parent"][f] == today[f]
            if checks["parent"][f].startswith("error"):
                evidence[f]["parent_error"] = checks["parent"][f]
        print(f"{commit[:10]}: {sum(evidence[f]['same_at_commit'] for f in files)} of {len(files)} "
              "unchanged since", flush=True)
    # the verdicts
    kept, dropped = [], []
    for f, rec in old.items():
        e = evidence[f]
        commit, date = adds.get(f, ("?", ""))
        if e["reproduced_by"]:
            why = ("today's code reproduces its fingerprint bit for bit with "
                   + "; ".join(e["reproduced_by"]))
        elif e.get("same_at_commit") and (e.get("same_at_parent") or "parent_error" in e):
            why = (f"the code of commit {commit[:10]} (which added it)"
                   + (" and of its parent" if e.get("same_at_parent") else "")
                   + " computes its code path's canary bit for bit as today's code does (on "
                   + runs.describe_machine(runs.machine()) + ")")
        else:
            dropped.append({"record": str(Path(f).relative_to(directory)), "config": rec.config,
                            "why": "no evidence that today's code computes what made it", **e})
            continue
        kept.append((f, rec, why, date, e))
    print(f"kept {len(kept)}, dropped {len(dropped)}", flush=True)
    if a.dry_run:
        return 0
    from nlutils import registry  # noqa: F401 (identify builds the canary)
    store = runs.RunStore(directory, train=False)
    summary = {"rule": "bitwise fingerprint -> configuration key + float64 canary by tolerance",
               "date": runs.machine()["date"], "migrated_on": runs.machine(),
               "kept": len(kept), "dropped": dropped,
               "by_evidence": {"bits reproduced": sum(bool(e["reproduced_by"]) for *_, e in kept),
                               "code unchanged since the record's commit":
                                   sum(not e["reproduced_by"] for *_, e in kept)},
               "records": {}}
    for f, rec, why, date, e in kept:
        c = rec.config
        config, canary, name = rekey_runs.identity(rec)
        if runs.canonical(config) != runs.canonical(c):
            raise RuntimeError(f"{f}: its configuration does not rebuild")
        rec.canary = store.canary(name, canary)
        rec.made_on = {"torch": rec.made_on.get("torch"), "date": date,
                       "inferred": inferred(e["reproduced_by"])}
        rec.provenance = {"fingerprint": rec.provenance["fingerprint"], "migrated": summary["date"],
                          "evidence": why, "reproduced_by": e["reproduced_by"]}
        new = store.path(config)
        runs.save(rec, new)
        if Path(f) != new:
            Path(f).unlink()
        summary["records"][str(new.relative_to(directory))] = {
            "was": str(Path(f).relative_to(directory)), "evidence": why}
    earlier = directory / "MIGRATION.json"
    if earlier.exists():  # a second pass (e.g. after a fix of this tool): add to the first
        first = json.loads(earlier.read_text())
        summary["kept"] += first["kept"]
        summary["records"] = {**first["records"], **summary["records"]}
        summary["by_evidence"] = {k: summary["by_evidence"][k] + first["by_evidence"].get(k, 0)
                                  for k in summary["by_evidence"]}
        summary["passes"] = first.get("passes", 1) + 1
    earlier.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"written {directory / 'MIGRATION.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
