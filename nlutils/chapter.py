"""The chapter layer: what a chapter notebook calls, and nothing below it imports.

* :class:`Chapter` resolves and validates the parameters (profile presets, strings from
  ``papermill -p`` parsed, every error naming the parameter, all before training), serves
  runs from the run records (:class:`nlutils.runs.RunStore` under ``book/runs``), and keeps
  one dictionary of metrics: :meth:`Chapter.glue` puts a number into the prose *and* into
  the metrics under the same name, so the text, ``book/results/<chapter>.json`` and the
  figures are fed from one object. :meth:`Chapter.claim` adds a row to the book's claims
  ledger; :meth:`Chapter.save` writes the record.
* :func:`compare` is the one rule for every conclusion: the mean paired difference over
  seeds with its 95 % t-interval, and a verdict (``better`` / ``worse`` / ``within noise``).

Example::

    ch = Chapter("foundations", profile, PRESETS, globals())  # the parameters cell's values
    rec = ch.train("mnist_sym40", "ce", model="mlp", recipe=Recipe(optimizer="adam", lr=1e-3),
                   seed=0)                     # rec.metrics, rec.history, rec.arrays
    ch.glue("hi_final", 81.2)                  # {glue:text}`hi_final` and metrics["hi_final"]
    ch.claim("memorisation drops test accuracy", paper=None, ours="96.1 → 81.2",
             protocol="final epoch", verdict="reproduced")
    ch.save()
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from . import data, profiles, registry, results, runs
from . import setting as setting_lib
from .recipe import Recipe

BOOK = Path(__file__).resolve().parent.parent / "book"  # the book's folders: this layer's choice
VERDICTS = ("reproduced", "partly", "not reproduced", "no paper number")


def compare(a, b, *, higher_is_better: bool = True, level: float = 0.95) -> dict:
    """Paired comparison of per-seed values ``a`` and ``b`` (same seeds, same order):
    ``{"mean", "low", "high", "n", "verdict"}`` for ``a - b``; the interval is the t-interval
    of the mean difference. ``verdict``: ``better`` when the whole interval favours ``a``,
    ``worse`` when it favours ``b``, else ``within noise`` (always so for one seed)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"compare needs two equally long, non-empty lists (got {a.shape} and {b.shape})")
    d = a - b
    n = d.size
    mean = float(d.mean())
    if n < 2:
        low, high = -math.inf, math.inf
    else:
        from scipy import stats

        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
        low, high = mean - half, mean + half
    lo, hi = (low, high) if higher_is_better else (-high, -low)
    verdict = "better" if lo > 0 else "worse" if hi < 0 else "within noise"
    return {"mean": mean, "low": low, "high": high, "n": int(n), "verdict": verdict}


def against_paper(ours, paper: float, *, close: float = 1.0, near: float = 5.0,
                  at_least: bool = False) -> str:
    """The verdict of our per-seed values against a paper's single number: ``reproduced``
    when the paper's number lies within two standard deviations of our mean or within
    ``close`` points of it (a single run of the paper scatters like one of our seeds),
    ``partly`` within ``near`` points, else ``not reproduced``. ``at_least=True`` for claims
    of the form "reaches X": a mean above the paper's number counts as reproduced."""
    v = np.asarray(ours, dtype=np.float64)
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    gap = abs(float(v.mean()) - float(paper))
    if at_least and float(v.mean()) >= float(paper):
        gap = 0.0
    if gap <= max(2 * sd, close):
        return "reproduced"
    return "partly" if gap <= near else "not reproduced"


def per_seed(pool: dict, method: str, setting: str, value) -> list:
    """The values of ``value`` for the runs ``pool[(method, setting, seed)]`` in seed order:
    ``value`` is a metric name, or a callable of the run (a :class:`runs.Record` or a dict
    with ``"metrics"`` and ``"history"``)."""
    seeds = sorted(s for m, n, s in pool if (m, n) == (method, setting))

    def get(r):
        if callable(value):
            return value(r)
        metrics = r.metrics if hasattr(r, "metrics") else r["metrics"]
        v = metrics.get(value)
        return float("nan") if v is None else float(v)
    return [get(pool[(method, setting, s)]) for s in seeds]


def paired(pool: dict, a: str, b: str, setting: str, value, **kw) -> dict:
    """:func:`compare` of methods ``a`` and ``b`` on ``setting`` over the seeds both have
    (a row may hold more seeds than another, e.g. the rows behind a verdict)."""
    common = sorted({s for m, n, s in pool if (m, n) == (a, setting)}
                    & {s for m, n, s in pool if (m, n) == (b, setting)})
    sub = {k: v for k, v in pool.items() if k[1] == setting and k[2] in common}
    return compare(per_seed(sub, a, setting, value), per_seed(sub, b, setting, value), **kw)


def summarise(pool: dict, methods, settings, value) -> dict:
    """``{method: {setting: {"mean", "std", "n"}}}`` of :func:`per_seed` (NaN when a run is
    missing a value, e.g. a refused one)."""
    out = {}
    for m in methods:
        out[m] = {}
        for s in settings:
            v = per_seed(pool, m, s, value)
            out[m][s] = (results.mean_std(v) if v and not np.isnan(v).any()
                         else {"mean": float("nan"), "std": float("nan"), "n": len(v)})
    return out


def unstable(pool: dict, column: str = "val_acc", drop: float = 15.0) -> list[dict]:
    """Runs that collapse for a while: at some epoch a run's history ``column`` is more than
    ``drop`` points below the median of its *seed mates* (the other seeds of the same method
    and setting) at the same epoch. Read from the histories alone, so it needs no test labels
    with ``column="val_acc"`` (the noisy validation split). One dict per flagged run, at its
    widest gap: ``method, setting, seed, epoch, value, mates`` (the mates' median there).
    A (method, setting) with a single seed, or runs without that column (refused ones), are
    skipped."""
    if drop <= 0:
        raise ValueError(f"drop must be a positive number of points (got {drop!r})")
    groups: dict = {}
    for (m, s, seed), rec in pool.items():
        h = rec.history if hasattr(rec, "history") else rec.get("history")
        if h is not None and len(h) and column in h.columns:
            groups.setdefault((m, s), {})[seed] = h.set_index("epoch")[column].astype(float)
    flagged = []
    for (m, s), by_seed in groups.items():
        for seed, own in sorted(by_seed.items()):
            mates = [v for k, v in by_seed.items() if k != seed]
            if not mates:
                continue
            median = np.median(np.stack([v.reindex(own.index).to_numpy() for v in mates]), axis=0)
            gap = median - own.to_numpy()
            if np.isnan(gap).all() or np.nanmax(gap) <= drop:
                continue
            i = int(np.nanargmax(gap))
            flagged.append({"method": m, "setting": s, "seed": seed, "epoch": int(own.index[i]),
                            "value": float(own.iloc[i]), "mates": float(median[i])})
    return flagged


def refused(reason: str) -> runs.Record:
    """The record of a run that was refused before training (an ill-conditioned T̂, say):
    every protocol's accuracy NaN, the reason kept."""
    nan = float("nan")
    return runs.Record({}, {"acc_last": nan, "acc_noisyval": nan, "acc_besttest": nan, "seconds": nan,
                            "refused": reason})


def describe(c: dict, unit: str = " points") -> str:
    """``"+1.40 (95% CI +0.52 to +2.28, 5 seeds): better"``."""
    if c["n"] < 2:
        return f"{c['mean']:+.2f}{unit} (one seed: no interval)"
    return (f"{c['mean']:+.2f}{unit} (95% CI {c['low']:+.2f} to {c['high']:+.2f}, "
            f"{c['n']} seeds): {c['verdict']}")


def identify(s: setting_lib.Setting, method: str, *, model: str, recipe: Recipe, seed: int,
             params: dict | None = None, model_args: dict | None = None, n_train: int = 0,
             trusted_per_class: int = 0, val_fraction: float = 0.0, track_train: bool | int = True):
    """What names a run: ``(config, canary, canary_name)`` for :meth:`runs.RunStore.run`."""
    prm = registry.params_key(method, params)
    config = dict(method=method, setting=s.name, model=model, model_args=model_args or {},
                  recipe=recipe.key(), seed=seed, params=prm, n_train=n_train,
                  trusted_per_class=trusted_per_class, val_fraction=val_fraction,
                  track_train=track_train)
    spec = data.SPECS[s.dataset]["train"]
    shape = (1, *spec[1:]) if len(spec) == 3 else (spec[3], spec[1], spec[2])
    K = len(data.SPECS[s.dataset]["classes"])
    copies = s.noise in ("massive", "massive_shift")
    canary = registry.canary(method, model=model, recipe=recipe, input_shape=shape,
                             params=params, model_args=model_args, num_classes=K, copies=copies)
    name = runs.canonical(dict(method=method, model=model, model_args=model_args or {},
                               recipe=recipe.key(), params=prm, shape=shape, K=K,
                               **({"copies": True} if copies else {})))
    return config, canary, name


def results_folder() -> Path:
    """``$NLUTILS_RESULTS``, else ``book/results``."""
    return Path(os.environ.get("NLUTILS_RESULTS") or BOOK / "results")


def _kernel_namespace(given: dict) -> dict:
    """The notebook's globals: ``given`` when it is them (it holds IPython's input history),
    else the running IPython kernel's, else ``given``."""
    if "_ih" in given or "In" in given:
        return given
    try:
        from IPython import get_ipython
    except ImportError:
        return given
    shell = get_ipython()
    return shell.user_ns if shell is not None else given


class Chapter:
    """Parameters, run records, glued metrics, claims and the record of one chapter."""

    def __init__(self, name: str, profile: str, presets: dict, given: dict,
                 checks: dict | None = None, runs_dir=None):
        self.name = name
        known = profiles.declared(presets)
        # a name papermill injected that the chapter does not declare is refused, not ignored
        for passed, value in profiles.injected(_kernel_namespace(given)).items():
            if passed not in known:
                raise profiles.unknown_parameter(passed, value, presets, chapter=f"the {name} chapter")
        # ``given`` may be the notebook's globals(): the parameters are the presets' names
        given = {k: v for k, v in dict(given).items() if k in known - {"profile"}}
        self.cfg = profiles.resolve(profile, presets, checks=checks, **given)
        self.given = {k for k, v in given.items() if v is not None}
        self.profile = profile
        self.metrics: dict = {}
        self.claims: list[dict] = []
        self.started = time.perf_counter()
        # the book's records are committed; smoke and paper runs stay local
        directory = runs_dir or os.environ.get("NLUTILS_RUNS") or (
            BOOK / "runs" if profile == "book" else BOOK.parent / ".cache" / f"runs-{profile}")
        self.store = runs.RunStore(directory)

    # ------------------------------------------------------------ runs
    def train(self, setting, method: str, *, model: str, recipe: Recipe, seed: int,
              params: dict | None = None, model_args: dict | None = None, n_train: int = 0,
              trusted_per_class: int = 0, val_fraction: float = 0.0, track_train: bool | int = True,
              device="cpu") -> runs.Record:
        """One method on one seed of one setting: the record from ``book/runs`` or a new
        run (:func:`registry.run`). The key is what the run is — setting, method and its
        parameters, model, recipe, seed, splits — not which chapter asked for it, so two
        chapters that run the same configuration share one record; it is served while the
        method's canary on this model and recipe (:func:`registry.canary`) agrees with the
        one stored in it."""
        s = setting_lib.parse(setting) if isinstance(setting, str) else setting
        config, canary, name = identify(s, method, model=model, recipe=recipe, seed=seed,
                                        params=params, model_args=model_args, n_train=n_train,
                                        trusted_per_class=trusted_per_class,
                                        val_fraction=val_fraction, track_train=track_train)

        def compute():
            problem = s.build(seed, n_train=n_train, trusted_per_class=trusted_per_class,
                              val_fraction=val_fraction)
            return registry.run(problem, method, model=model, recipe=recipe, seed=seed,
                                params=params, model_args=model_args, device=device,
                                track_train=track_train)

        return self.store.run(config, compute, canary=canary, canary_name=name, device=device)

    # ------------------------------------------------------------ numbers
    def glue(self, name: str, value, *, metric: bool = True, display: bool = False) -> None:
        """Glue ``value`` for the prose (``{glue:text}`name```) and, unless
        ``metric=False``, store it in the chapter's metrics under the same name. Returns
        nothing, so that a cell ending in a glue shows no bare value on the page."""
        from myst_nb import glue

        if isinstance(value, np.generic):  # a numpy scalar's repr ('np.float64(…)') defeats the prose's format spec
            value = value.item()
        glue(name, value, display=display)
        if metric:
            self.metrics[name] = value

    def parameters(self):
        """The resolved parameters as a table for the page: each value and whether the
        reader gave it or the profile did."""
        from IPython.display import Markdown

        def text(x):  # plain text that wraps in a narrow column; no markdown emphasis
            return str(x).replace("\\", "\\\\").replace("_", "\\_").replace("*", "\\*").replace("|", "\\|")

        rows = [f"| {text(k)} | {text(repr(v))} | {'given' if k in self.given else 'profile ' + self.profile} |"
                for k, v in vars(self.cfg).items() if k != "profile"]
        return Markdown("| parameter | value | set by |\n|---|---|---|\n" + "\n".join(rows))

    def claim(self, claim: str, *, paper, ours, protocol: str, verdict: str, source: str = ""):
        """One row of the claims ledger: the paper's claim, its number, ours (with the
        protocol that produced it) and a verdict computed by the chapter."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict={verdict!r} must be one of {VERDICTS}")
        self.claims.append({"claim": claim, "paper": paper, "ours": ours, "protocol": protocol,
                            "verdict": verdict, "source": source})

    def save(self, extra_metrics: dict | None = None, headline: list | None = None, seeds=None) -> Path:
        """Write ``book/results/<chapter>.json`` (``.<profile>.json`` for smoke/paper);
        ``seeds``: every seed the page's runs used, where more than the ``seeds`` parameter."""
        metrics = {**self.metrics, **(extra_metrics or {})}
        return results.save(self.name, metrics, profile=self.profile, parameters=vars(self.cfg),
                            directory=results_folder(),
                            seeds=seeds or getattr(self.cfg, "seeds", None) or (
                                [self.cfg.seed] if hasattr(self.cfg, "seed") else None),
                            run_seconds=time.perf_counter() - self.started,
                            headline=headline, claims=self.claims,
                            compute_seconds=self.store.seconds,
                            runs=sorted(str(p.relative_to(self.store.directory))
                                        for p in self.store.used.values()),
                            machines=self.machine_counts())

    def machine_counts(self) -> dict:
        """``{where: number of runs}`` over the runs this chapter used (their ``made_on``)."""
        counts: dict[str, int] = {}
        for where in self.store.machines.values():
            counts[where] = counts.get(where, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def reproduce_box(self):
        """The "Reproduce this chapter" admonition (:func:`results.reproduce_box`)."""
        return results.reproduce_box(self.name, directory=results_folder())
