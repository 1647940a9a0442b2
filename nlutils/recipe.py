"""How a network is trained, as one value: a :class:`Recipe`.

A recipe holds everything :func:`nlutils.train.fit` needs besides the data, the model and
the method hook: optimiser, learning rate, momentum, weight decay, batch size, epochs, one
learning-rate schedule (:func:`nlutils.train.lr_schedule`), precision, augmentation, label
smoothing, flip test-time augmentation, and how long to train: ``epochs`` of
``steps_per_epoch`` steps (default: one pass over the rows) with early stopping after
``patience`` epochs without a better validation accuracy (the best weights restored). It is a frozen dataclass, so it can be part of a
run's configuration (``asdict``) and changed only by making a new one
(``recipe.replace(epochs=5)``), which validates again and names the bad field.

Example::

    from nlutils import recipe, models, train
    r = recipe.RECIPES["fastcnn"].replace(epochs=10)
    net = models.build("fastcnn", (3, 32, 32), 10, seed=0)
    history = train.fit(net, x, y, **r.fit_kwargs(), seed=0)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from . import train


@dataclass(frozen=True)
class Recipe:
    """Training hyperparameters; every field is checked on construction."""

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    batch_size: int = 128
    epochs: int = 10
    schedule: str = "constant"
    schedule_args: dict = field(default_factory=dict)  # milestones, gamma, warmup, start, end
    schedule_per_step: bool = False  # evaluate the schedule before every step (smooth)
    precision: str = "fp32"
    augment: str = "none"
    label_smoothing: float = 0.0
    tta: bool = False
    freeze: dict = field(default_factory=dict)  # parameter-name prefix -> epochs it trains
    steps_per_epoch: int | None = None  # an "epoch" of this many steps (an evaluation period)
    patience: int | None = None  # stop after this many epochs without a better validation accuracy

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"{name}={getattr(self, name)!r} {why}")
        if self.optimizer not in train.OPTIMIZERS:
            bad("optimizer", f"is unknown; choose one of {', '.join(train.OPTIMIZERS)}")
        for name in ("lr",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                bad(name, "must be a number > 0")
        for name in ("momentum", "weight_decay", "label_smoothing"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                bad(name, "must be a number >= 0")
        if self.momentum >= 1:
            bad("momentum", "must be < 1")
        if self.label_smoothing >= 1:
            bad("label_smoothing", "must be < 1")
        for name in ("batch_size", "epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(name, "must be an integer >= 1")
        for name in ("steps_per_epoch", "patience"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                bad(name, "must be None or an integer >= 1")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            bad("nesterov", "needs optimizer='sgd' with momentum > 0")
        if self.precision not in train.PRECISIONS:
            bad("precision", f"is unknown; choose one of {', '.join(train.PRECISIONS)}")
        try:
            train.augmentation(self.augment)
        except ValueError as e:
            raise ValueError(str(e)) from None
        try:
            train.lr_schedule(self.schedule, self.epochs, **self.schedule_args)
        except TypeError as e:
            raise ValueError(f"schedule_args={self.schedule_args!r}: {e}") from None
        except ValueError as e:
            raise ValueError(f"schedule={self.schedule!r}: {e}") from None

    def replace(self, **changes) -> "Recipe":
        """A copy with ``changes`` (validated); unknown names raise ``ValueError``."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"{sorted(unknown)} are not recipe fields")
        return dataclasses.replace(self, **changes)

    def asdict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> dict:
        """The fields that differ from :class:`Recipe`'s defaults: what identifies a recipe
        in a run record's key, so that a new field whose default keeps the old behaviour
        leaves every stored record valid."""
        base = Recipe()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(base, f.name)}

    def fit_kwargs(self) -> dict:
        """Keyword arguments for :func:`nlutils.train.fit`."""
        return dict(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                    weight_decay=self.weight_decay, nesterov=self.nesterov,
                    batch_size=self.batch_size, epochs=self.epochs,
                    lr_schedule=train.lr_schedule(self.schedule, self.epochs, **self.schedule_args),
                    schedule_per_step=self.schedule_per_step,
                    precision=self.precision, augment=self.augment,
                    label_smoothing=self.label_smoothing, tta=self.tta,
                    freeze=dict(self.freeze), steps_per_epoch=self.steps_per_epoch,
                    patience=self.patience)


#: The fast CIFAR network's recipe (``models.build("fastcnn")`` after
#: ``models.init_whitening``), measured in ``bench/cifar_cnn.py``: airbench's
#: hyperparameters for batch 256 with a mean loss (lr 11.5 / (1024 (1 + 1/(1 - 0.85))) per
#: summed example = 0.375 per batch mean; decoupled weight decay 0.0153 per 1024 examples =
#: 1.33e-3 in SGD's coupled form), Nesterov momentum 0.85, label smoothing 0.2, translate-by-2
#: with reflection + flip, a one-cycle schedule evaluated before every step (warm-up over the
#: first 20 % of training from 0.2x, then linear down to 0), bf16 autocast, the whitening
#: bias frozen after 3 epochs.
FASTCNN = Recipe(optimizer="sgd", lr=0.375, momentum=0.85, weight_decay=1.33e-3, nesterov=True,
                 batch_size=256, epochs=30, schedule="triangle",
                 schedule_args=dict(warmup=0.2, start=0.2, end=0.0), schedule_per_step=True,
                 precision="bf16", augment="translate2+flip", label_smoothing=0.2, tta=True,
                 freeze={"whiten.bias": 3})

#: The fast CNN for noisy labels: :data:`FASTCNN` without label smoothing (itself a
#: noise-robust loss, and one a method's own loss would replace) and without flip TTA, 15
#: epochs, with the ELR paper's augmentation (random 4-pixel crops and flips): the regime of
#: the papers' tables, where a small network trained briefly hardly memorises wrong labels.
FASTCNN_NOISY = FASTCNN.replace(label_smoothing=0.0, tta=False, augment="crop4+flip", epochs=15)
#: ... and without augmentation: the regime of ELR's Figure 1 (its repository's issue #23),
#: where cross-entropy memorises the wrong labels as the learning rate decays.
FASTCNN_MEMO = FASTCNN_NOISY.replace(augment="none")

#: The ELR paper's CIFAR-10 recipe (ResNet-34): SGD lr 0.02, momentum 0.9, weight decay
#: 1e-3, batch 128, 120 epochs, x0.01 at epochs 40 and 80, random crops and flips.
ELR_PAPER = Recipe(optimizer="sgd", lr=0.02, momentum=0.9, weight_decay=1e-3, batch_size=128,
                   epochs=120, schedule="step", schedule_args=dict(milestones=[1 / 3, 2 / 3], gamma=0.01),
                   augment="crop4+flip")
#: A small recipe for the unit-test data (digits, an MLP): what ``profile=smoke`` runs.
SMOKE = Recipe(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3, batch_size=64, epochs=3,
               schedule="triangle", schedule_args=dict(warmup=0.2, start=0.2, end=0.0),
               schedule_per_step=True, augment="none")

#: What L2RW's Adam variant changes in a recipe: Adam at 1e-3 for the real and the virtual
#: step, no weight decay and no momentum term (the exact Adam meta-gradient of
#: :mod:`nlutils.methods.reweight` assumes one parameter group without weight decay).
L2RW_ADAM = dict(optimizer="adam", lr=1e-3, momentum=0.0, nesterov=False, weight_decay=0.0)


def for_l2rw(recipe: Recipe, inner: str) -> Recipe:
    """``recipe`` for L2RW with an ``inner`` (``"sgd"``: the recipe's own optimiser takes the
    virtual step, as in Ren et al.; ``"adam"``: :data:`L2RW_ADAM`, as in the blog)."""
    if inner not in ("sgd", "adam"):
        raise ValueError(f"inner={inner!r} must be 'sgd' or 'adam'")
    return recipe.replace(**L2RW_ADAM) if inner == "adam" else recipe


RECIPES = {"fastcnn": FASTCNN, "fastcnn_noisy": FASTCNN_NOISY, "fastcnn_memo": FASTCNN_MEMO,
           "elr_paper": ELR_PAPER, "smoke": SMOKE}
