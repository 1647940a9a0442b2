"""Profiles and parameter validation for the chapters.

A chapter's parameters cell sets ``profile`` (``smoke``, ``book`` or ``paper``) and leaves
every other parameter at ``None``; :func:`resolve` fills the ``None`` ones from the
profile's defaults, so a parameter given explicitly (``papermill -p epochs 5``) always
wins, then validates everything *before* any training starts. A bad value raises a
``ValueError`` that names the parameter.

Example::

    PRESETS = {"smoke": dict(epochs=1, seeds=[0]), "book": dict(epochs=20, seeds=[0, 1, 2]),
               "paper": dict(epochs=120, seeds=[0, 1, 2])}
    cfg = resolve("book", PRESETS, epochs=None, seeds=[7])   # cfg.epochs == 20, cfg.seeds == [7]
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from . import data, models, noise, train

PROFILES = ("smoke", "book", "paper")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _rate(name, v):
    noise.check_rate(v, name)


def _choice(options):
    def check(name, v):
        if v not in options:
            raise ValueError(f"{name}={v!r} is unknown; choose one of {', '.join(map(str, options))}")
    return check


def _each(check, allow_empty: bool = False):
    def run(name, v):
        if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__iter__"):
            raise ValueError(f"{name}={v!r} must be a list")
        if len(list(v)) == 0 and not allow_empty:
            raise ValueError(f"{name} must not be empty")
        for item in v:
            check(name, item)
    return run


def _positive_int(name, v):
    if not _is_int(v) or v < 1:
        raise ValueError(f"{name}={v!r} must be an integer >= 1")


def _nonneg_int(name, v):
    if not _is_int(v) or v < 0:
        raise ValueError(f"{name}={v!r} must be an integer >= 0")


def _positive(name, v):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
        raise ValueError(f"{name}={v!r} must be a number > 0")


def _seed(name, v):
    if not _is_int(v) or v < 0:
        raise ValueError(f"{name} must hold integers >= 0, got {v!r}")


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


def _transition(name, v):
    try:
        noise.check_transition(v)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def _nonneg(name, v):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
        raise ValueError(f"{name}={v!r} must be a number >= 0")


def _fraction(name, v):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1:
        raise ValueError(f"{name}={v!r} must be a number in [0, 1)")


# ------------------------------------------------------------ checks a chapter composes

def subset_of(allowed, empty_ok: bool = False, must_include=()):
    """A check: the value is a list of items of ``allowed`` (non-empty unless ``empty_ok``),
    containing every item of ``must_include``."""
    allowed = list(allowed)

    def check(name, v):
        if not isinstance(v, list) or (not v and not empty_ok) or sorted(set(v) - set(allowed), key=str):
            raise ValueError(f"{name}={v!r} must be a {'' if empty_ok else 'non-empty '}subset of {allowed}")
        for item in must_include:
            if item not in v:
                raise ValueError(f"{name}={v!r} must include {item!r}")
    return check


def one_of(options):
    """A check: the value is one of ``options``."""
    return _choice(list(options))


def setting_names(name, v):
    """A check: a list of setting names of :mod:`nlutils.setting`."""
    from . import setting

    if not isinstance(v, list):
        raise ValueError(f"{name}={v!r} must be a list of setting names")
    for s in v:
        try:
            setting.parse(s)
        except ValueError as e:
            raise ValueError(f"{name}={v!r}: {e}") from None


def setting_name(name, v):
    """A check: one setting name of :mod:`nlutils.setting`."""
    from . import setting

    try:
        setting.parse(v)
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{name}={v!r}: {e}") from None


def recipe_name(name, v):
    """A check: a name in :data:`nlutils.recipe.RECIPES`."""
    from .recipe import RECIPES

    if v not in RECIPES:
        raise ValueError(f"{name}={v!r} is unknown; choose one of {', '.join(RECIPES)}")


def at_least(k: int):
    """A check: an integer >= ``k``."""
    def check(name, v):
        if not _is_int(v) or v < k:
            raise ValueError(f"{name}={v!r} must be an integer >= {k}")
    return check


def in_range(lo: float, hi: float):
    """A check: a number in ``(lo, hi]``."""
    def check(name, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi:
            raise ValueError(f"{name}={v!r} must lie in ({lo}, {hi}]")
    return check


#: parameter name -> check(name, value); names not listed here or in :data:`PATTERNS` are
#: passed through unchecked (a chapter adds its own with ``resolve(..., checks=...)``)
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

#: checks by the shape of a name, for the parameters a chapter adds (``higher_seeds``,
#: ``ablation_epochs``, ``conv_steps``, ``blog_alpha``, ...): (suffix, check)
PATTERNS = (("seeds", _each(_seed, allow_empty=True)), ("_seed", _seed), ("epochs", _positive_int),
            ("steps", _positive_int), ("examples", _positive_int), ("_per_batch", _positive_int),
            ("_alpha", _nonneg_int), ("alphas", _each(_nonneg_int, allow_empty=True)),
            ("_sizes", _each(_positive_int)), ("batch_size", _positive_int), ("_lrs", _each(_positive)),
            ("_recipe", recipe_name), ("_model", _choice(models.MODELS)), ("_dataset", _choice(data.DATASETS)))


def check_for(name: str):
    """The check of parameter ``name``: by name, else by the shape of the name, else None."""
    if name in CHECKS:
        return CHECKS[name]
    for suffix, check in PATTERNS:
        if name.endswith(suffix):
            return check
    return None


def coerce(name: str, value, default):
    """A value given as a string by ``papermill -p`` (``"[0.2, 0.6]"``, ``"0"``, ``"True"``)
    parsed as the Python literal it spells, when the profile's default is not a string.
    A string that is not a literal raises ``ValueError`` naming the parameter."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    import ast

    try:
        return ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        if default is None:
            return value  # a free-form string parameter
        raise ValueError(f"{name}={value!r} is not a valid value: expected a "
                         f"{type(default).__name__} such as {default!r}") from None


def validate(params: dict) -> None:
    """Check every known parameter in ``params``; raise ``ValueError`` naming the first bad one."""
    for name, value in params.items():
        check = check_for(name)
        if check is not None and value is not None:
            check(name, value)


def resolve(profile: str, presets: dict, checks: dict | None = None, **given) -> SimpleNamespace:
    """Profile defaults overridden by the explicitly given (non-``None``) parameters; strings
    from ``papermill -p`` are parsed (:func:`coerce`); every value is checked
    (:data:`CHECKS`, :data:`PATTERNS`, then the chapter's own ``checks``: name ->
    ``check(name, value)``) before any training starts."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is unknown; choose one of {', '.join(PROFILES)}")
    cfg = dict(presets.get(profile, {}))
    known = set().union(*(p.keys() for p in presets.values())) if presets else set()
    unknown = set(given) - known
    if unknown:
        raise ValueError(f"parameter(s) {sorted(unknown)} are not used by this chapter; "
                         f"it takes {sorted(known)}")
    cfg.update({k: coerce(k, v, cfg.get(k)) for k, v in given.items() if v is not None})
    missing = sorted(k for k, v in cfg.items() if v is None)
    if missing:
        raise ValueError(f"parameter(s) {missing} have no value for profile={profile!r}")
    validate(cfg)
    for name, check in (checks or {}).items():
        if cfg.get(name) is not None:
            check(name, cfg[name])
    if cfg.get("device") == "auto":  # a GPU when there is one
        cfg["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return SimpleNamespace(profile=profile, **cfg)
