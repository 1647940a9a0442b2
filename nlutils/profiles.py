"""Profiles and parameter rules for the chapters.

A chapter's parameters cell sets ``profile`` (``smoke``, ``book`` or ``paper``) and leaves
every other parameter at ``None``; :func:`resolve` fills the ``None`` ones from the
profile's defaults, so a parameter given explicitly (``papermill -p epochs 5``) always
wins, then checks everything *before* any training starts. A bad value raises a
``ValueError`` that names the parameter as the reader passed it, the value and what is
allowed.

Every parameter has a :class:`Rule`: by its name (:data:`CHECKS`), by the shape of its name
(:data:`PATTERNS`: ``*_seeds``, ``*_epochs``, ...), and the chapter's own rules (the
``checks`` a chapter passes), all of which apply. A rule is a check of the value alone, or a
*bound* (:func:`bound`): a check against the data (rows per class, training rows) or another
parameter (``k <= batch_size``), run once every value has passed its own checks. A parameter
without any rule is a programming error (``TypeError``), so that a new parameter cannot go
unchecked; each rule lists values it refuses (``bad``), from which ``tests/test_parameters.py``
generates its cases.

Example::

    PRESETS = {"smoke": dict(epochs=1, seeds=[0]), "book": dict(epochs=20, seeds=[0, 1, 2]),
               "paper": dict(epochs=120, seeds=[0, 1, 2])}
    cfg = resolve("book", PRESETS, epochs=None, seeds=[7])   # cfg.epochs == 20, cfg.seeds == [7]
"""
from __future__ import annotations

import ast
import difflib
from types import SimpleNamespace
from typing import Callable

import torch

from . import data, models, noise, train

PROFILES = ("smoke", "book", "paper")
#: larger than any data set's rows: a value every size bound refuses
HUGE = 10**9


class Rule:
    """How a parameter is checked. ``check(name, value)`` (or, for a bound,
    ``check(name, value, cfg)``) raises ``ValueError`` naming the parameter; ``bad`` holds
    values the rule refuses (the generated test passes each as a reader would, together with
    the other parameters in ``context``, for a bound that needs them)."""

    def __init__(self, check: Callable, bad=(), *, is_bound: bool = False, context: dict | None = None):
        self.check, self.bad, self.is_bound, self.context = check, list(bad), is_bound, dict(context or {})

    def __call__(self, name, value, cfg=None):
        return self.check(name, value, cfg) if self.is_bound else self.check(name, value)


def rule(bad=()):
    """Decorator: ``check(name, value)`` as a :class:`Rule` refusing ``bad``."""
    return lambda fn: Rule(fn, bad)


def bound(bad=(HUGE,), context: dict | None = None):
    """Decorator: ``check(name, value, cfg)`` as a bound (run after every value's own checks;
    ``cfg`` holds all the resolved parameters); ``bad`` is refused given ``context``."""
    return lambda fn: Rule(fn, bad, is_bound=True, context=context)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@rule(bad=[1.5, -0.1])
def _rate(name, v):
    noise.check_rate(v, name)


def _choice(options):
    options = list(options)

    def check(name, v):
        if v not in options:
            raise ValueError(f"{name}={v!r} is unknown; choose one of {', '.join(map(str, options))}")
    return Rule(check, bad=["bogus"])


def _each(item: Rule, allow_empty: bool = False) -> Rule:
    def run(name, v):
        if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__iter__"):
            raise ValueError(f"{name}={v!r} must be a list")
        if len(list(v)) == 0 and not allow_empty:
            raise ValueError(f"{name}={v!r} must not be empty")
        for i, x in enumerate(v):
            item(f"{name}[{i}]", x)  # e.g. "seeds[1]=-1 must be an integer >= 0"
    return Rule(run, bad=([] if allow_empty else [[]]) + [[b] for b in item.bad])


@rule(bad=[0, -1, 2.5])
def _positive_int(name, v):
    if not _is_int(v) or v < 1:
        raise ValueError(f"{name}={v!r} must be an integer >= 1")


@rule(bad=[-1, 2.5])
def _nonneg_int(name, v):
    if not _is_int(v) or v < 0:
        raise ValueError(f"{name}={v!r} must be an integer >= 0")


@rule(bad=[0, -1.0])
def _positive(name, v):
    if not _is_number(v) or not v > 0:
        raise ValueError(f"{name}={v!r} must be a number > 0")


@rule(bad=[-1, 1.5])
def _seed(name, v):
    if not _is_int(v) or v < 0:
        raise ValueError(f"{name}={v!r} must be an integer >= 0")


@rule(bad=["tpu:9"])
def _device(name, v):
    if v == "auto":
        return
    try:
        d = torch.device(v)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name}={v!r} is not a torch device ({e})") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={v!r} but no CUDA device is available here; use 'cpu'")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={v!r} but MPS is not available here; use 'cpu'")


@rule(bad=[[[0.5, 0.5], [0.5]]])
def _transition(name, v):
    try:
        noise.check_transition(v)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


@rule(bad=[-1.0])
def _nonneg(name, v):
    if not _is_number(v) or not v >= 0:
        raise ValueError(f"{name}={v!r} must be a number >= 0")


@rule(bad=[1.0, -0.1])
def _fraction(name, v):
    if not _is_number(v) or not 0 <= v < 1:
        raise ValueError(f"{name}={v!r} must be a number in [0, 1)")


@rule(bad=[3, "yes"])
def flag(name, v):
    """A rule: ``True`` or ``False``."""
    if not isinstance(v, bool):
        raise ValueError(f"{name}={v!r} must be True or False")


@rule(bad=["rotate", "crop4+"])
def augmentation(name, v):
    """A rule: an augmentation name of :func:`nlutils.train.augmentation`."""
    if not isinstance(v, str):
        raise ValueError(f"{name}={v!r} must be the name of an augmentation such as 'crop4+flip'")
    try:
        train.augmentation(v)
    except ValueError as e:
        raise ValueError(str(e).replace("augment=", f"{name}=", 1)) from None


# ------------------------------------------------------------ rules a chapter composes

def subset_of(allowed, empty_ok: bool = False, must_include=()) -> Rule:
    """A rule: the value is a list of items of ``allowed`` (non-empty unless ``empty_ok``),
    containing every item of ``must_include``."""
    allowed = list(allowed)

    def check(name, v):
        if not isinstance(v, list) or (not v and not empty_ok) or sorted(set(v) - set(allowed), key=str):
            raise ValueError(f"{name}={v!r} must be a {'' if empty_ok else 'non-empty '}subset of {allowed}")
        for item in must_include:
            if item not in v:
                raise ValueError(f"{name}={v!r} must include {item!r}")
    bad = [["bogus"]] + ([] if empty_ok else [[]])
    bad += [[a for a in allowed if a != must_include[0]]] if must_include and len(allowed) > 1 else []
    return Rule(check, bad)


def one_of(options) -> Rule:
    """A rule: the value is one of ``options``."""
    return _choice(options)


@rule(bad=[["cifar10_sym400"], ["nosuchdata_sym40"]])
def setting_names(name, v):
    """A rule: a list of setting names of :mod:`nlutils.setting`."""
    from . import setting

    if not isinstance(v, list):
        raise ValueError(f"{name}={v!r} must be a list of setting names")
    for s in v:
        try:
            setting.parse(s)
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{name}={v!r}: {e}") from None


@rule(bad=["cifar10_sym400", "nosuchdata_sym40"])
def setting_name(name, v):
    """A rule: one setting name of :mod:`nlutils.setting`."""
    from . import setting

    try:
        setting.parse(v)
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{name}={v!r}: {e}") from None


@rule(bad=["no_such_recipe"])
def recipe_name(name, v):
    """A rule: a name in :data:`nlutils.recipe.RECIPES`."""
    from .recipe import RECIPES

    if v not in RECIPES:
        raise ValueError(f"{name}={v!r} is unknown; choose one of {', '.join(RECIPES)}")


def at_least(k: int) -> Rule:
    """A rule: an integer >= ``k``."""
    def check(name, v):
        if not _is_int(v) or v < k:
            raise ValueError(f"{name}={v!r} must be an integer >= {k}")
    return Rule(check, bad=[k - 1, k + 0.5])


def in_range(lo: float, hi: float) -> Rule:
    """A rule: a number in ``(lo, hi]``."""
    def check(name, v):
        if not _is_number(v) or not lo < v <= hi:
            raise ValueError(f"{name}={v!r} must lie in ({lo}, {hi}]")
    return Rule(check, bad=[lo, hi + 1])


# ------------------------------------------------------------ bounds against the data

def datasets_of(value) -> list[str]:
    """The data sets a parameter value names: a data set (``mnist``), a setting
    (``cifar10n_worse``) or a list of either."""
    from . import setting

    values = value if isinstance(value, list) else [value]
    return sorted({v if v in data.SPECS else setting.parse(v).dataset for v in values})


def fewer_than_class(where: str, leave: int = 1) -> Rule:
    """A bound: a count per class (trusted rows, folds) below the smallest class of the
    training set of every data set named by parameter ``where``, leaving ``leave`` rows of it."""
    @bound()
    def check(name, v, cfg):
        for ds in datasets_of(getattr(cfg, where)):
            smallest = min(data.class_counts(ds))
            if v > smallest - leave:
                raise ValueError(f"{name}={v} is too large: the smallest class of {ds}'s training "
                                 f"set has {smallest} images (from {where}={getattr(cfg, where)!r}); "
                                 f"use at most {smallest - leave}")
    return check


def rows_of(where: str, leave: int = 1) -> Rule:
    """A bound: a number of rows (a validation split, tracked rows, a training subset, or a
    list of them) at most the training images of the data set named by ``where``, less
    ``leave``."""
    @bound(bad=[HUGE, [HUGE]])
    def check(name, v, cfg):
        for ds in datasets_of(getattr(cfg, where)):
            n = sum(data.class_counts(ds))
            for x in (v if isinstance(v, list) else [v]):
                if x > n - leave:
                    raise ValueError(f"{name}={v!r} is too large: {ds} has {n} training images "
                                     f"(from {where}={getattr(cfg, where)!r}); use at most {n - leave}")
    return check


def at_most(other: str) -> Rule:
    """A bound: at most the value of parameter ``other`` (``k`` <= ``batch_size``)."""
    @bound()
    def check(name, v, cfg):
        if v > getattr(cfg, other):
            raise ValueError(f"{name}={v} must be at most {other}={getattr(cfg, other)}")
    return check


def among(other: str, bad=(["digits_clean"],)) -> Rule:
    """A bound: a list whose items are all in the list parameter ``other`` (the settings
    that get the secondary seeds are among ``settings``); ``bad``: lists it refuses."""
    @bound(bad=list(bad))
    def check(name, v, cfg):
        extra = [x for x in v if x not in getattr(cfg, other)]
        if extra:
            raise ValueError(f"{name}={v!r}: {extra} not in {other}={getattr(cfg, other)!r}")
    return check


@rule(bad=["fashion_mnist"])
def with_asymmetric_map(name, v):
    """A rule: a data set with a class-pair map of Patrini et al. (``asym`` noise)."""
    from . import setting

    maps = sorted(d for k, d in setting.DATA.items() if k in setting.ASYM)
    if v not in maps:
        raise ValueError(f"{name}={v!r} has no asymmetric (Patrini) noise map; choose one of {', '.join(maps)}")


def rows_left(where: str, taken: str) -> Rule:
    """A bound: sizes (a list) at most the training images of ``where``'s data set less the
    rows parameter ``taken`` holds out (``clean_sizes`` within what ``n_val`` leaves)."""
    @bound(bad=[[HUGE]])
    def check(name, v, cfg):
        ds = getattr(cfg, where)
        left = sum(data.class_counts(ds)) - getattr(cfg, taken)
        if max(v) > left:
            raise ValueError(f"{name}={v} asks for more than the {left} training images of {ds} "
                             f"that {taken}={getattr(cfg, taken)} leaves")
    return check


def each_below(other: str) -> Rule:
    """A bound: every item of a list below the value of parameter ``other`` (learning-rate
    milestones within ``epochs``)."""
    @bound(bad=[[HUGE]])
    def check(name, v, cfg):
        if any(x >= getattr(cfg, other) for x in v):
            raise ValueError(f"{name}={v} must hold values below {other}={getattr(cfg, other)}")
    return check


def at_most_len(other: str, minus: int = 0, why: str = "") -> Rule:
    """A bound: a count at most the length of list parameter ``other``, less ``minus``."""
    @bound()
    def check(name, v, cfg):
        most = len(getattr(cfg, other)) - minus
        if v > most:
            raise ValueError(f"{name}={v} must be at most {most}{why} ({other}={getattr(cfg, other)})")
    return check


def needs(item, other: str, value, otherwise) -> Rule:
    """A bound: a list that holds ``item`` needs parameter ``other`` to equal ``value``
    (``otherwise``: another valid value of ``other``, for the generated test)."""
    @bound(bad=[[item]], context={other: otherwise})
    def check(name, v, cfg):
        if item in v and getattr(cfg, other) != value:
            raise ValueError(f"{name}={v}: {item!r} needs {other}={value!r}, "
                             f"not {getattr(cfg, other)!r}; set it or drop {item!r}")
    return check


#: parameter name -> rule; a chapter adds its own with ``resolve(..., checks=...)``
CHECKS = {
    "dataset": _choice(data.DATASETS),
    "model": _choice(models.MODELS),
    "models": _each(_choice(models.MODELS)),
    "noise": _choice(noise.NOISE_TYPES),
    "rate": _rate, "rates": _each(_rate),
    "alpha": _nonneg_int, "alphas": _each(_nonneg_int),
    "epochs": _positive_int, "batch_size": _positive_int,
    "seeds": _each(_seed), "seed": _seed,
    "lr": _positive, "lrs": _each(_positive),
    "optimizer": _choice(train.OPTIMIZERS),
    "device": _device,
    "T": _transition,
    "per_class": _nonneg_int, "trusted_per_class": _nonneg_int, "track_rows": _nonneg_int,
    "n_train": _nonneg_int, "n_val": _positive_int,
    "patience": _positive_int, "eval_every": _positive_int, "cleanlab_folds": at_least(2),
    "recipe": recipe_name, "percentile": in_range(0, 100),
    "precision": _choice(train.PRECISIONS), "conv_precision": _choice(train.PRECISIONS),
    "a": _nonneg, "k": _positive_int,
    "val_fraction": _fraction, "momentum": _fraction, "weight_decay": _nonneg,
    "lr_decay": _positive, "lr_gamma": _positive,
}

#: rules by the shape of a name, for the parameters a chapter adds (``higher_seeds``,
#: ``ablation_epochs``, ``conv_steps``, ``blog_alpha``, ``lam_sym``, ...): (prefix, suffix, rule)
PATTERNS = (("", "seeds", _each(_seed, allow_empty=True)), ("", "_seed", _seed),
            ("", "epochs", _positive_int), ("", "steps", _positive_int), ("", "examples", _positive_int),
            ("", "_per_batch", _positive_int), ("", "_per_class", _nonneg_int),
            ("", "_alpha", _nonneg_int), ("", "alphas", _each(_nonneg_int, allow_empty=True)),
            ("", "_sizes", _each(_positive_int)), ("", "batch_size", _positive_int),
            ("", "_lrs", _each(_positive)), ("", "_lr", _positive),
            ("", "_milestones", _each(_positive_int, allow_empty=True)), ("", "_rates", _each(_rate)),
            ("", "_recipe", recipe_name), ("", "_model", _choice(models.MODELS)),
            ("", "_dataset", _choice(data.DATASETS)), ("", "_setting", setting_name),
            ("lam_", "", _nonneg), ("beta_", "", _fraction))


def check_for(name: str) -> Rule | None:
    """The shared rule of parameter ``name``: by name, else by the shape of the name, else None."""
    if name in CHECKS:
        return CHECKS[name]
    for prefix, suffix, r in PATTERNS:
        if name.startswith(prefix) and name.endswith(suffix):
            return r
    return None


def rules_for(name: str, checks: dict | None = None) -> list[Rule]:
    """Every rule of parameter ``name``: the shared one, then the chapter's (a rule or a list)."""
    own = (checks or {}).get(name, [])
    own = list(own) if isinstance(own, (list, tuple)) else [own]
    for r in own:
        if not isinstance(r, Rule):
            raise TypeError(f"the chapter's rule for {name!r} must be a profiles.Rule "
                            f"(profiles.rule(bad=...) around the check), not {r!r}")
    shared = check_for(name)
    return ([shared] if shared else []) + own


def coerce(name: str, value, default):
    """A value given as a string by ``papermill -p`` (``"[0.2, 0.6]"``, ``"0"``, ``"True"``)
    parsed as the Python literal it spells, when the profile's default is not a string.
    A string that is not a literal raises ``ValueError`` naming the parameter."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        return ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        if default is None:
            return value  # a free-form string parameter
        raise ValueError(f"{name}={value!r} is not a valid value: expected a "
                         f"{type(default).__name__} such as {default!r}") from None


def _type_check(name: str, value, default) -> None:
    """The value has the type of the profile's default (an int where a float is expected
    is fine; a list for a list)."""
    if default is None or value is None:
        return
    want = (int, float) if _is_number(default) else type(default)
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, want):
        raise ValueError(f"{name}={value!r} must be a {type(default).__name__} such as {default!r}")


def validate(params: dict, checks: dict | None = None) -> None:
    """Check every parameter in ``params`` by its rules (bounds excluded); raise
    ``ValueError`` naming the first bad one."""
    for name, value in params.items():
        if value is not None:
            for r in rules_for(name, checks):
                if not r.is_bound:
                    r(name, value)


def declared(presets: dict) -> set:
    """The parameter names of a chapter: the presets' keys and ``profile``."""
    return set().union(*(p.keys() for p in presets.values())) | {"profile"} if presets else {"profile"}


def unknown_parameter(name: str, value, presets: dict, chapter: str = "this chapter") -> ValueError:
    """The error for a parameter the chapter does not declare: what was passed, the nearest
    declared name and the list of them."""
    names = sorted(declared(presets))
    near = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    return ValueError(f"{name}={value!r} is not a parameter of {chapter}: it would be ignored.{hint} "
                      f"The parameters are: {', '.join(names)}")


def injected(namespace: dict) -> dict:
    """The parameters papermill injected into a notebook kernel: the assignments of its
    cell ``# Parameters`` (the last one in IPython's input history ``In``), by name."""
    history = namespace.get("_ih") or namespace.get("In") or []
    cells = [src for src in history if isinstance(src, str) and src.lstrip().startswith("# Parameters")]
    if not cells:
        return {}
    out = {}
    for node in ast.parse(cells[-1]).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = namespace.get(t.id)
    return out


def resolve(profile: str, presets: dict, checks: dict | None = None, **given) -> SimpleNamespace:
    """Profile defaults overridden by the explicitly given (non-``None``) parameters; strings
    from ``papermill -p`` are parsed (:func:`coerce`) and must have the default's type; every
    value is checked by its rules (:func:`rules_for`), then the bounds against the data and
    the other parameters, before any training starts."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is unknown; choose one of {', '.join(PROFILES)}")
    cfg = dict(presets.get(profile, {}))
    names = declared(presets) - {"profile"}
    for name in sorted(set(given) - names):
        raise unknown_parameter(name, given[name], presets)
    unruled = sorted(n for n in names if not rules_for(n, checks))
    if unruled:
        raise TypeError(f"parameter(s) {unruled} have no rule: add one to profiles.CHECKS or "
                        f"to the chapter's checks")
    for k, v in given.items():
        if v is not None:
            default = next((p[k] for p in presets.values() if p.get(k) is not None), None)
            cfg[k] = coerce(k, v, default)
            _type_check(k, cfg[k], default)
    missing = sorted(k for k, v in cfg.items() if v is None)
    if missing:
        raise ValueError(f"parameter(s) {missing} have no value for profile={profile!r}")
    validate(cfg, checks)
    ns = SimpleNamespace(profile=profile, **cfg)
    for name, value in cfg.items():
        for r in rules_for(name, checks):
            if r.is_bound:
                r(name, value, ns)
    if cfg.get("device") == "auto":  # a GPU when there is one
        ns.device = "cuda" if torch.cuda.is_available() else "cpu"
    return ns
