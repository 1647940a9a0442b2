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


def _each(check):
    def run(name, v):
        if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
            raise ValueError(f"{name}={v!r} must be a list")
        if len(list(v)) == 0:
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


#: parameter name -> check(name, value); names not listed are passed through unchecked
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
    "per_class": _nonneg_int,
}


def validate(params: dict) -> None:
    """Check every known parameter in ``params``; raise ``ValueError`` naming the first bad one."""
    for name, value in params.items():
        if name in CHECKS and value is not None:
            CHECKS[name](name, value)


def resolve(profile: str, presets: dict, **given) -> SimpleNamespace:
    """Profile defaults overridden by the explicitly given (non-``None``) parameters."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is unknown; choose one of {', '.join(PROFILES)}")
    cfg = dict(presets.get(profile, {}))
    known = set().union(*(p.keys() for p in presets.values())) if presets else set()
    unknown = set(given) - known
    if unknown:
        raise ValueError(f"parameter(s) {sorted(unknown)} are not used by this chapter; "
                         f"it takes {sorted(known)}")
    cfg.update({k: v for k, v in given.items() if v is not None})
    missing = sorted(k for k, v in cfg.items() if v is None)
    if missing:
        raise ValueError(f"parameter(s) {missing} have no value for profile={profile!r}")
    validate(cfg)
    if cfg.get("device") == "auto":  # a GPU when there is one
        cfg["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return SimpleNamespace(profile=profile, **cfg)
