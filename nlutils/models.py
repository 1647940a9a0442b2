"""The sources' networks, in one registry.

``build(name, input_shape, num_classes, seed=..., **kw)`` returns a fresh ``nn.Module``
initialised from ``seed`` (the global RNG is left untouched).

=================  =========================================================  ==========
name               network                                                    used by
=================  =========================================================  ==========
``perceptron``     Flatten -> Linear                                          Rolnick
``mlp``            Flatten -> [Linear -> ReLU (-> Dropout)] * len(hidden)     Rolnick,
                   -> Linear; ``hidden=(256, 128)`` etc.                      L2RW blog
``mlp1/2/4``       the massive-noise blog's MLPs (256 / 256-128 / 256-128-64)  Rolnick
``conv4``          the blog's Conv4: 4 x (conv3x3 -> ReLU -> maxpool) with     Rolnick
                   32/64/128/256 channels, FC 1000, FC K
``patrini_mnist``  784-128-128-K, ReLU, dropout (rate 0.2; the slides only      Patrini
                   say "dropout")
``lenet5``         conv5x5(6) -> pool -> conv5x5(16) -> pool -> 120 -> 84 -> K   Wei
``resnet32``       CIFAR ResNet (He et al. 2016, 3 stages of 5 basic blocks)     Patrini
``resnet34``       ResNet-34 (basic blocks 3-4-6-3) with a 3x3 CIFAR stem        ELR
``wrn28_10``       wide ResNet 28-10, pre-activation                            Ren et al.
=================  =========================================================  ==========
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        REGISTRY[name] = fn
        return fn
    return deco


def build(name: str, input_shape=(1, 28, 28), num_classes: int = 10,
          seed: int | None = None, **kw) -> nn.Module:
    """Instantiate model ``name`` for inputs of ``input_shape`` (C, H, W)."""
    if name not in REGISTRY:
        raise ValueError(f"model={name!r} is unknown; choose one of {', '.join(sorted(REGISTRY))}")
    if seed is None:
        return REGISTRY[name](tuple(input_shape), num_classes, **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return REGISTRY[name](tuple(input_shape), num_classes, **kw)


def _numel(shape) -> int:
    return math.prod(shape)


@register("perceptron")
def perceptron(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(input_shape), num_classes))


@register("mlp")
def mlp(input_shape, num_classes, hidden=(128, 64), dropout: float = 0.0):
    layers: list[nn.Module] = [nn.Flatten()]
    width = _numel(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


register("mlp1")(lambda s, k: mlp(s, k, hidden=(256,)))
register("mlp2")(lambda s, k: mlp(s, k, hidden=(256, 128)))
register("mlp4")(lambda s, k: mlp(s, k, hidden=(256, 128, 64)))
register("patrini_mnist")(lambda s, k, dropout=0.2: mlp(s, k, hidden=(128, 128), dropout=dropout))


@register("conv4")
def conv4(input_shape, num_classes):
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for cout in (32, 64, 128, 256):
        layers += [nn.Conv2d(c, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = cout, h // 2, w // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, 1000), nn.ReLU(),
                         nn.Linear(1000, num_classes))


@register("lenet5")
def lenet5(input_shape, num_classes):
    c, h, w = input_shape
    fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(c, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * fh * fw, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Basic-block ResNet with a 3x3 stem for 32x32 inputs."""

    def __init__(self, in_channels: int, num_classes: int, blocks, widths):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register("resnet32")
def resnet32(input_shape, num_classes):
    return ResNet(input_shape[0], num_classes, blocks=(5, 5, 5), widths=(16, 32, 64))


@register("resnet34")
def resnet34(input_shape, num_classes):
    return ResNet(input_shape[0], num_classes, blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512))


class WideBlock(nn.Module):
    """Pre-activation wide-ResNet block (Zagoruyko & Komodakis 2016)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.dropout(F.relu(self.bn2(o))))
        return o + short


@register("wrn28_10")
def wrn28_10(input_shape, num_classes, depth: int = 28, width: int = 10, dropout: float = 0.0):
    """WRN-28-10, the network of Ren et al.'s CIFAR experiments (36.5 M parameters)."""
    n = (depth - 4) // 6
    widths = [16, 16 * width, 32 * width, 64 * width]
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False)]
    cin = widths[0]
    for stage, w in enumerate(widths[1:]):
        for j in range(n):
            layers.append(WideBlock(cin, w, 2 if (j == 0 and stage > 0) else 1, dropout))
            cin = w
    layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


MODELS = tuple(REGISTRY)
