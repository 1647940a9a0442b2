"""A noise *setting* by name, one grammar for every chapter, built on :func:`noise.corrupt`.

Grammar: ``<data>_<noise>``.

* ``<data>``: ``mnist``, ``fmnist`` (Fashion-MNIST), ``cifar10``, ``digits`` (the unit
  tests' scikit-learn digits), or ``cifar10n`` for CIFAR-10's human labels;
* ``<noise>`` for synthetic noise: ``clean``, or a kind followed by a rate, written in
  percent (``40``) or as a fraction (``0.4``):

  ===============  ==================================================================
  ``sym``          flip to one of the other K-1 classes (:func:`noise.symmetric`)
  ``symincl``      uniform over all K classes, the true one included (ELR's code)
  ``asym``         the data set's class-pair map of Patrini et al. (``patrini_mnist``
                   for MNIST and digits, ``patrini_cifar10``); ``patrini`` is a synonym
  ``fixedother``   the L2RW blog's generator (:func:`noise.fixed_other_T`)
  ===============  ==================================================================

* ``<noise>`` for ``cifar10n``: ``aggre``, ``random1``, ``random2``, ``random3``, ``worse``;
* ``alpha<α>`` (an integer): Rolnick et al.'s massive noise, ``α`` extra rows per clean
  image, each with a label drawn uniformly from all K classes (:func:`noise.massive`);
  ``alphashift<α>``: the same rows labelled as the blog reproduction did, with the true
  label of the image ``shift`` rows further on (class frequencies, not uniform). Rows of
  these settings are not images: the :class:`Problem` maps each row to its image
  (``image``) and label (``row_labels``), and its ``val`` rows are *clean* held-out
  images (no copies).

Examples: ``cifar10_sym40``, ``cifar10_asym40``, ``cifar10n_worse``, ``mnist_patrini0.6``,
``fmnist_sym60``, ``mnist_fixedother0.8``, ``digits_sym40``, ``mnist_alpha100``.

:meth:`Setting.build` returns a :class:`Problem`: the data set, the noisy labels of *all*
training images (a :class:`noise.NoisyLabels`) and three sets of rows, ``train``,
``trusted`` (clean examples by their true label) and ``val`` (a noisy validation split,
stratified by the given labels), as indices into ``x_train``: no image is copied.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from . import data, noise

DATA = {"mnist": "mnist", "fmnist": "fashion_mnist", "cifar10": "cifar10", "digits": "digits",
        "cifar10n": "cifar10"}
KINDS = {"sym": "symmetric", "symincl": "symmetric_incl", "fixedother": "fixed_other"}
ASYM = {"mnist": "patrini_mnist", "cifar10": "patrini_cifar10", "digits": "patrini_mnist"}
HUMAN = ("aggre", "random1", "random2", "random3", "worse")
#: the seed of the fixed stratified training subset (``n_train``): the same images for every
#: seed and method, so that seeds vary the noise, the splits and the network only
SUBSET_SEED = 12345

_ALL_LOADED: dict[str, data.Dataset] = {}


def load_cached(name: str) -> data.Dataset:
    """:func:`data.load` once per process (the tensors are shared, never modified)."""
    if name not in _ALL_LOADED:
        _ALL_LOADED[name] = data.load(name)
    return _ALL_LOADED[name]


@dataclass(frozen=True)
class Setting:
    name: str
    data: str          # key of :data:`DATA`
    dataset: str       # the nlutils.data name
    noise: str         # a noise.corrupt name, "human", "massive" or "massive_shift"
    rate: float        # nominal rate (0 for clean; the measured rate for human noise is in the
                       # Problem; alpha, the copies per image, for massive noise)
    human: str | None = None

    @property
    def is_human(self) -> bool:
        return self.human is not None

    def build(self, seed: int = 0, *, n_train: int = 0, trusted_per_class: int = 0,
              val_fraction: float = 0.0, ds: data.Dataset | None = None) -> "Problem":
        """Data, noisy labels and rows for ``seed``. ``n_train`` (0: all) keeps a fixed
        stratified subset (:data:`SUBSET_SEED`); ``trusted_per_class`` clean examples per
        class are set aside (by true label, seed ``seed``); ``val_fraction`` of the rest
        forms a noisy validation split, stratified by the given label."""
        for name, v in (("seed", seed), ("n_train", n_train), ("trusted_per_class", trusted_per_class)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}={v!r} must be an integer >= 0")
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
                or not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction!r} must lie in [0, 1)")
        ds = ds if ds is not None else load_cached(self.dataset)
        if self.noise in ("massive", "massive_shift"):
            return self._build_copies(seed, ds, n_train, val_fraction)
        K = ds.num_classes
        y = ds.y_train
        if self.is_human:
            given = data.cifar10n_labels(self.human)
            nl = noise.NoisyLabels(given, y.clone(), given != y, noise.realised_T(y, given, K),
                                   noise.realised_T(y, given, K))
        else:
            nl = noise.corrupt(y, self.noise, self.rate, K, seed=seed)
        pool = torch.arange(len(y))
        if n_train:
            if n_train > len(y):
                raise ValueError(f"n_train={n_train} exceeds the {len(y)} training images of {self.dataset}")
            pool = data.stratified_subset(y, n_train, seed=SUBSET_SEED)
        trusted = torch.empty(0, dtype=torch.long)
        rest = pool
        if trusted_per_class:
            trusted, rest = data.trusted_split(y, trusted_per_class, seed=seed, indices=pool)
        val = torch.empty(0, dtype=torch.long)
        if val_fraction:
            val, rest = data.validation_split(rest, val_fraction, seed=seed, labels=nl.noisy)
        return Problem(self, seed, ds, nl, rest, trusted, val,
                       options=dict(n_train=n_train, trusted_per_class=trusted_per_class,
                                    val_fraction=val_fraction))

    def _build_copies(self, seed, ds, n_train, val_fraction) -> "Problem":
        """Rolnick's rows: clean validation images first (seed ``seed``), then ``n_train``
        clean images (a fixed stratified subset; 0: all the rest), then ``alpha`` noisy rows
        per clean image. No image is copied: ``image`` maps rows to images."""
        y, K, alpha = ds.y_train, ds.num_classes, int(self.rate)
        val = torch.empty(0, dtype=torch.long)
        base = torch.arange(len(y))
        if val_fraction:
            val, base = data.validation_split(base, val_fraction, seed=seed, labels=y)
        if n_train:
            if n_train > len(base):
                raise ValueError(f"n_train={n_train} exceeds the {len(base)} clean training images")
            base = base[data.stratified_subset(y[base], n_train, seed=SUBSET_SEED)]
        if self.noise == "massive":
            m = noise.massive(y[base], alpha, K, seed=seed)
            image, labels = base[m.index], m.labels
        else:  # the blog: row r shows image r // (alpha+1); copies take the label of image r + shift
            n = len(base)
            shift = int(torch.randint(0, n, (1,), generator=torch.Generator().manual_seed(seed)))
            r = torch.arange(n * (alpha + 1))
            img = r // (alpha + 1)
            labels = torch.where(r % (alpha + 1) == 0, y[base][img], y[base][(r + shift) % n])
            image = base[img]
        clean = noise.NoisyLabels(y.clone(), y.clone(), torch.zeros(len(y), dtype=torch.bool),
                                  torch.eye(K, dtype=torch.float64), torch.eye(K, dtype=torch.float64))
        return Problem(self, seed, ds, clean, torch.arange(len(image)), torch.empty(0, dtype=torch.long),
                       val, image=image, row_labels=labels, options=dict(n_train=n_train, val_fraction=val_fraction))


@dataclass
class Problem:
    """One seed of a setting: ``ds.x_train[rows]`` with labels ``labels[rows]``."""

    setting: Setting
    seed: int
    ds: data.Dataset
    labels: noise.NoisyLabels  # over all training images
    train: torch.Tensor        # rows a method learns from (noisy labels)
    trusted: torch.Tensor      # clean rows (true labels), empty unless asked for
    val: torch.Tensor          # noisy validation rows, empty unless asked for (images)
    image: torch.Tensor | None = None       # massive noise: the image of each training row
    row_labels: torch.Tensor | None = None  # ... and its label (train holds row numbers)
    options: dict = field(default_factory=dict)  # build()'s row options (n_train, val_fraction, ...)

    @property
    def num_classes(self) -> int:
        return self.ds.num_classes

    @property
    def noise_rate(self) -> float:
        """Measured share of wrong labels on the training rows (percent)."""
        if self.image is not None:
            return 100.0 * float((self.row_labels != self.ds.y_train[self.image]).double().mean())
        return 100.0 * float(self.labels.is_noisy[self.train].double().mean())


def parse(name: str) -> Setting:
    """The :class:`Setting` named ``name`` (see the module docstring for the grammar)."""
    if not isinstance(name, str) or "_" not in name:
        raise ValueError(f"setting={name!r} is not '<data>_<noise>', e.g. 'cifar10_sym40'")
    head, tail = name.split("_", 1)
    if head not in DATA:
        raise ValueError(f"setting={name!r}: data {head!r} is unknown; choose one of {', '.join(DATA)}")
    if head == "cifar10n":
        if tail not in HUMAN:
            raise ValueError(f"setting={name!r}: CIFAR-10N labels {tail!r} are unknown; choose "
                             f"one of {', '.join(HUMAN)}")
        return Setting(name, head, DATA[head], "human", 0.0, human=tail)
    if tail == "clean":
        return Setting(name, head, DATA[head], "none", 0.0)
    m = re.fullmatch(r"(alpha|alphashift)(\d+)", tail)
    if m:
        return Setting(name, head, DATA[head], "massive" if m.group(1) == "alpha" else "massive_shift",
                       int(m.group(2)))
    m = re.fullmatch(r"([a-z]+)(\d+(?:\.\d+)?)", tail)
    if not m:
        raise ValueError(f"setting={name!r}: noise {tail!r} is not '<kind><rate>' such as sym40 "
                         f"or patrini0.6")
    kind, num = m.groups()
    rate = float(num) if "." in num else int(num) / 100
    if kind in ("asym", "patrini"):
        if head not in ASYM:
            raise ValueError(f"setting={name!r}: no class-pair map for {head!r} (only "
                             f"{', '.join(ASYM)})")
        kind_name = ASYM[head]
    elif kind in KINDS:
        kind_name = KINDS[kind]
    else:
        raise ValueError(f"setting={name!r}: noise kind {kind!r} is unknown; choose one of "
                         f"sym, symincl, asym, patrini, fixedother, alpha, alphashift, or clean")
    noise.check_rate(rate, f"setting={name!r}: rate")
    return Setting(name, head, DATA[head], kind_name, rate)


_KIND_OF = {"symmetric": "sym", "symmetric_incl": "symincl", "fixed_other": "fixedother",
            "patrini_mnist": "asym", "patrini_cifar10": "asym"}


def data_key(dataset: str) -> str:
    """The grammar's name of an ``nlutils.data`` data set (``fashion_mnist`` -> ``fmnist``)."""
    for key, name in DATA.items():
        if name == dataset and key != "cifar10n":
            return key
    raise ValueError(f"dataset={dataset!r} has no setting name; choose one of "
                     f"{', '.join(sorted(set(DATA.values())))}")


def make(data_name: str, noise_name: str, rate: float) -> Setting:
    """The setting of a data set, a :func:`noise.corrupt` name and a rate, e.g.
    ``make("mnist", "symmetric", 0.4)`` is ``mnist_sym40``; ``"none"`` (or rate 0 with
    symmetric noise) gives ``<data>_clean``."""
    head = data_key(data_name) if data_name in DATA.values() else data_name
    if noise_name == "none" or (noise_name == "symmetric" and rate == 0):
        return parse(f"{head}_clean")
    if noise_name not in _KIND_OF:
        raise ValueError(f"noise={noise_name!r} is unknown; choose one of none, {', '.join(_KIND_OF)}")
    pct = round(100 * rate, 6)
    num = str(int(pct)) if pct == int(pct) else repr(float(rate))
    out = parse(f"{head}_{_KIND_OF[noise_name]}{num}")
    if out.noise != noise_name:
        raise ValueError(f"noise={noise_name!r} does not apply to {data_name!r} (its map is {out.noise!r})")
    return out

