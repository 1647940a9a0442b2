"""Label-noise generators with exact, seeded flip counts.

Class-conditional noise is described by a transition matrix ``T`` with
``T[i, j] = p(noisy label = j | true label = i)`` (rows sum to one). Every generator here
returns a :class:`NoisyLabels` record with the noisy labels, the clean labels, the
``is_noisy`` mask, the nominal ``T`` and the *realised* ``T`` (the empirical transition
matrix of the labels actually produced).

Exactness: instead of drawing each label independently (which makes the real rate wander
around the nominal one), class ``i``'s ``n_i`` examples are split into exactly
``round(n_i * T[i, j])`` examples per target class ``j`` (largest-remainder rounding, so
the counts add up to ``n_i``), and a seeded permutation decides *which* examples go where.
The realised rate therefore equals the nominal one up to one example per cell.

Which papers use which noise:

* ``symmetric(..., include_true=False)`` — flip to one of the *other* K-1 classes
  ("uniform flip"): Ren et al. 2018 (UNIFORMFLIP), Wei 2020, Patrini et al. 2017.
* ``symmetric(..., include_true=True)`` — draw the label uniformly from *all* K classes,
  so only ``rate * (K-1)/K`` labels really change: the ELR code (Liu et al. 2020),
  whose "40%" is about 36% real noise, and Rolnick et al. 2017's added labels.
* ``pairwise(name, rate)`` — the class-pair presets of Patrini et al. 2017
  (``patrini_mnist``: 2→7, 3→8, 5↔6, 7→1; ``patrini_cifar10``: truck→automobile,
  bird→airplane, deer→horse, cat↔dog), also ELR's asymmetric setting on CIFAR-10.
* ``massive(y, alpha)`` — Rolnick et al. 2017: alpha extra copies of each example with a
  label drawn uniformly from all classes, as an index map (no image is copied).

Example::

    import torch
    from nlutils import noise
    y = torch.randint(0, 10, (1000,))
    nl = noise.symmetric(y, rate=0.4, num_classes=10, seed=0)
    nl.is_noisy.float().mean()   # tensor(0.4000)
    nl.T_realised                # ~ 0.6 on the diagonal, ~0.0444 elsewhere

Depends on torch only: copy the file into your project if you like.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["NoisyLabels", "MassiveNoise", "NOISE_TYPES", "corrupt", "symmetric_T", "pairwise_T", "PRESETS",
           "from_transition", "symmetric", "pairwise", "massive", "realised_T", "fixed_other_T",
           "check_transition"]


@dataclass
class NoisyLabels:
    noisy: torch.Tensor      # int64 (N,), the labels a learner sees
    clean: torch.Tensor      # int64 (N,), the true labels
    is_noisy: torch.Tensor   # bool (N,), noisy != clean
    T: torch.Tensor          # float64 (K, K), nominal transition matrix
    T_realised: torch.Tensor  # float64 (K, K), empirical p(noisy=j | clean=i)

    @property
    def rate(self) -> float:
        """The realised fraction of wrong labels."""
        return float(self.is_noisy.double().mean())


def check_rate(rate: float, name: str = "rate") -> float:
    if not (isinstance(rate, (int, float)) and 0.0 <= float(rate) < 1.0):
        raise ValueError(f"{name}={rate!r} must be a number in [0, 1)")
    return float(rate)


def check_transition(T, num_classes: int | None = None, atol: float = 1e-6) -> torch.Tensor:
    """Return ``T`` as float64 after checking it is a square row-stochastic matrix."""
    T = torch.as_tensor(T, dtype=torch.float64)
    if T.ndim != 2 or T.shape[0] != T.shape[1]:
        raise ValueError(f"T must be a square matrix, got shape {tuple(T.shape)}")
    if num_classes is not None and T.shape[0] != num_classes:
        raise ValueError(f"T is {T.shape[0]}x{T.shape[0]} but num_classes={num_classes}")
    if (T < -atol).any() or not torch.allclose(T.sum(1), torch.ones(len(T), dtype=T.dtype),
                                               atol=atol):
        raise ValueError("T must be row-stochastic: entries >= 0 and every row summing to 1 "
                         f"(row sums: {T.sum(1).tolist()})")
    return T.clamp_min(0)


def symmetric_T(rate: float, num_classes: int, include_true: bool = False) -> torch.Tensor:
    """``T = (1-r) I + r/(K-1) (11ᵀ - I)``, or with ``include_true`` ``(1-r) I + r/K 11ᵀ``."""
    r, K = check_rate(rate), num_classes
    if include_true:
        return (1 - r) * torch.eye(K, dtype=torch.float64) + r / K
    off = torch.full((K, K), r / (K - 1), dtype=torch.float64)
    off.fill_diagonal_(1 - r)
    return off


#: class-pair flips: preset name -> list of (true, noisy) pairs
PRESETS = {
    "patrini_mnist": [(2, 7), (3, 8), (5, 6), (6, 5), (7, 1)],
    "patrini_cifar10": [(9, 1), (2, 0), (4, 7), (3, 5), (5, 3)],
}


def pairwise_T(name: str, rate: float, num_classes: int = 10) -> torch.Tensor:
    """Transition matrix of a preset: each listed true class keeps its label with
    probability ``1 - rate`` and moves to its partner with probability ``rate``."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown; choose one of {', '.join(PRESETS)}")
    r = check_rate(rate)
    T = torch.eye(num_classes, dtype=torch.float64)
    for i, j in PRESETS[name]:
        T[i, i], T[i, j] = 1 - r, r
    return T


def _largest_remainder(n: int, probs: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer counts that add up to ``n`` and are as close as possible to ``n * probs``.
    Ties between equal remainders (the off-diagonal cells of a symmetric T) are broken by
    ``generator``, so that the seed, not the class index, decides which cells get the extra
    example."""
    raw = probs * n
    counts = torch.floor(raw).long()
    short = n - int(counts.sum())
    if short > 0:
        rem = raw - counts
        perm = (torch.randperm(len(rem), generator=generator) if generator is not None
                else torch.arange(len(rem)))
        order = perm[torch.argsort(rem[perm], descending=True, stable=True)]
        counts[order[:short]] += 1
    return counts


def realised_T(clean: torch.Tensor, noisy: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Empirical ``p(noisy=j | clean=i)``; a class absent from ``clean`` gets an identity row."""
    C = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    C.index_put_((clean, noisy), torch.ones(len(clean), dtype=torch.float64), accumulate=True)
    n = C.sum(1, keepdim=True)
    return torch.where(n > 0, C / n.clamp_min(1), torch.eye(num_classes, dtype=torch.float64))


def from_transition(y: torch.Tensor, T, seed: int = 0) -> NoisyLabels:
    """Corrupt labels ``y`` with transition matrix ``T``, exactly per class."""
    y = torch.as_tensor(y, dtype=torch.long)
    T = check_transition(T)
    K = len(T)
    if len(y) and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"labels must lie in 0..{K - 1} for a {K}x{K} T")
    g = torch.Generator().manual_seed(seed)
    noisy = y.clone()
    for i in range(K):
        members = torch.nonzero(y == i).flatten()
        if len(members) == 0:
            continue
        counts = _largest_remainder(len(members), T[i], g)
        members = members[torch.randperm(len(members), generator=g)]
        noisy[members] = torch.repeat_interleave(torch.arange(K), counts)
    return NoisyLabels(noisy, y.clone(), noisy != y, T, realised_T(y, noisy, K))


def symmetric(y, rate: float, num_classes: int, seed: int = 0,
              include_true: bool = False) -> NoisyLabels:
    """Symmetric noise: a fraction ``rate`` of each class gets another class's label,
    spread evenly (``include_true=False``); or a fraction ``rate`` is relabelled uniformly
    over all K classes, the true one included (``include_true=True``)."""
    return from_transition(y, symmetric_T(rate, num_classes, include_true), seed)


def pairwise(y, name: str, rate: float, num_classes: int = 10, seed: int = 0) -> NoisyLabels:
    """Asymmetric noise from a named preset in :data:`PRESETS`."""
    return from_transition(y, pairwise_T(name, rate, num_classes), seed)


@dataclass
class MassiveNoise:
    """Rolnick et al.'s data set: ``n (1 + alpha)`` rows; row ``r`` shows image
    ``index[r]`` with label ``labels[r]``. The first ``n`` rows are the clean originals."""

    index: torch.Tensor     # int64 (n (1+alpha),), which image each row shows
    labels: torch.Tensor    # int64 (n (1+alpha),)
    is_added: torch.Tensor  # bool, True for the alpha added copies
    is_noisy: torch.Tensor  # bool, label differs from the image's true class
    T_realised: torch.Tensor  # float64, over the added copies only

    def __len__(self) -> int:
        return len(self.index)


def massive(y, alpha: int, num_classes: int, seed: int = 0) -> MassiveNoise:
    """For every example add ``alpha`` copies labelled uniformly at random from all
    ``num_classes`` classes (true class included), fixed once drawn. Only an index map is
    stored: at alpha = 100 on MNIST that is 6.06 M int64s (48 MB), not 19 GB of images.
    The per-class label counts of the copies are exact (each class receives
    ``n_i * alpha / K`` labels up to rounding)."""
    if not isinstance(alpha, int) or alpha < 0:
        raise ValueError(f"alpha={alpha!r} must be an integer >= 0")
    y = torch.as_tensor(y, dtype=torch.long)
    n = len(y)
    base = torch.arange(n)
    copies = base.repeat(alpha)                   # image index of each added row
    uniform = torch.full((num_classes, num_classes), 1.0 / num_classes, dtype=torch.float64)
    added = from_transition(y[copies], uniform, seed) if alpha else None
    index = torch.cat([base, copies])
    labels = torch.cat([y, added.noisy]) if alpha else y.clone()
    is_added = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n * alpha, dtype=torch.bool)])
    T = added.T_realised if alpha else torch.eye(num_classes, dtype=torch.float64)
    return MassiveNoise(index, labels, is_added, labels != y[index], T)


def fixed_other_T(rate: float, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """The noise of the Learning-to-Reweight blog post: a fraction ``rate`` of each class is
    relabelled with ``randint(0, K)``, and a draw that hits the true class is replaced by
    one *fixed* other class ``c_i`` (chosen once per class). Every relabelled example is
    therefore wrong, but class ``c_i`` receives twice the share of the others:
    ``T[i, i] = 1 - r``, ``T[i, c_i] = 2r/K``, ``T[i, j] = r/K`` otherwise.
    Returns ``(T, [c_0, ..., c_{K-1}])``."""
    r, K = check_rate(rate), num_classes
    g = torch.Generator().manual_seed(seed)
    fixed = []
    T = torch.full((K, K), r / K, dtype=torch.float64)
    for i in range(K):
        others = [j for j in range(K) if j != i]
        c = others[int(torch.randint(0, K - 1, (1,), generator=g))]
        fixed.append(c)
        T[i, i] = 1 - r
        T[i, c] = 2 * r / K
    return T, fixed


#: the ``noise`` parameter of the chapters
NOISE_TYPES = ("none", "symmetric", "symmetric_incl", "fixed_other", *PRESETS)


def corrupt(y, noise: str, rate: float, num_classes: int, seed: int = 0) -> NoisyLabels:
    """Dispatch on a chapter's ``noise`` parameter: ``none``, ``symmetric`` (flip to another
    class), ``symmetric_incl`` (uniform over all classes, true one included),
    ``fixed_other`` (the L2RW blog's generator, :func:`fixed_other_T`) or a preset."""
    if noise == "none":
        rate = 0.0
    if noise in ("none", "symmetric"):
        return symmetric(y, rate, num_classes, seed)
    if noise == "symmetric_incl":
        return symmetric(y, rate, num_classes, seed, include_true=True)
    if noise == "fixed_other":
        return from_transition(y, fixed_other_T(rate, num_classes, seed)[0], seed)
    if noise in PRESETS:
        return pairwise(y, noise, rate, num_classes, seed)
    raise ValueError(f"noise={noise!r} is unknown; choose one of {', '.join(NOISE_TYPES)}")
