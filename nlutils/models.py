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
``fastcnn``        airbench-style CIFAR net (Jordan 2024): 2x2 patch-whitening  the CIFAR
                   conv (24 ch) -> GELU -> 3 x [conv3x3 -> maxpool2 -> BN ->     chapters
                   GELU -> conv3x3 -> BN -> GELU] -> maxpool3 -> linear / 9;      (book
                   ``widths=(32, 64, 128)``; ``fastcnn94`` has airbench94's     profile)
                   (64, 256, 256)
=================  =========================================================  ==========

The ``fastcnn`` family trains fast on a CPU in bf16 with ``channels_last`` (see
``bench/cifar_cnn.py``); call :func:`init_whitening` with training *images* (never labels)
before training to set its first layer from the patch covariance, as airbench does.
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
        layers += [nn.Conv2d(c, cout, 3, padding=1), nn.ReLU()]
        if min(h, w) >= 2:  # 28 -> 14 -> 7 -> 3 -> 1 on MNIST; small inputs keep a 1x1 map
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = cout
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


class FastCNN(nn.Module):
    """An airbench-style network for 32x32 images (Jordan 2024, "94% on CIFAR-10 in 3.29
    seconds on a single GPU"; the architecture of hlb-CIFAR10 with a whitening stem).

    * ``whiten``: a 2x2 convolution with ``2 * C * 4`` filters and no padding (32 -> 31
      pixels). :func:`init_whitening` sets its filters to the eigenvectors of the 2x2 patch
      covariance, scaled by 1/sqrt(eigenvalue), each with its negative (so that the GELU
      after it keeps both signs); they are then frozen and only the bias trains.
    * three blocks ``conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU`` of widths
      ``widths``; each conv starts as an identity (Dirac) on its first input channels; the
      BatchNorms have no trainable scale (weight fixed at 1) and momentum 0.4 (airbench's
      0.6 in its convention), eps 1e-12;
    * a 3x3 max pool (3 -> 1 pixel), a linear layer without bias, and logits scaled by
      ``scale = 1/9``.
    """

    def __init__(self, in_channels: int, num_classes: int, widths=(32, 64, 128),
                 scale: float = 1 / 9, bn_momentum: float = 0.4):
        super().__init__()
        if len(widths) != 3 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths={widths!r} must be three positive channel counts")
        self.widths = tuple(int(w) for w in widths)
        self.scale = float(scale)
        wc = 2 * in_channels * 2 * 2
        self.whiten = nn.Conv2d(in_channels, wc, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set by init_whitening, then fixed
        nn.init.zeros_(self.whiten.bias)
        blocks, cin = [], wc
        for w in self.widths:
            blocks.append(nn.Sequential(
                _dirac_conv(cin, w), nn.MaxPool2d(2), _fixed_scale_bn(w, bn_momentum), nn.GELU(),
                _dirac_conv(w, w), _fixed_scale_bn(w, bn_momentum), nn.GELU()))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes, bias=False)

    def forward(self, x):
        x = self.blocks(F.gelu(self.whiten(x)))
        x = F.adaptive_max_pool2d(x, 1).flatten(1)  # = MaxPool2d(3) on the 3x3 map
        return self.head(x) * self.scale


def _dirac_conv(cin, cout):
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:min(cin, cout)])
    return conv


def _fixed_scale_bn(width, momentum):
    bn = nn.BatchNorm2d(width, eps=1e-12, momentum=momentum)
    bn.weight.requires_grad_(False)
    return bn


@torch.no_grad()
def init_whitening(model: nn.Module, images: torch.Tensor, eps: float = 5e-4) -> nn.Module:
    """Set ``model.whiten`` (a k x k conv with ``2 * C * k * k`` filters) from the patch
    covariance of ``images`` (N, C, H, W): filters ``±v_j / sqrt(λ_j + eps)`` for the
    eigenpairs ``(λ_j, v_j)``, largest first. Uses the images only, never labels."""
    conv = model.whiten
    c, (kh, kw) = images.shape[1], conv.kernel_size
    patches = images.float().unfold(2, kh, 1).unfold(3, kw, 1)         # N C H' W' kh kw
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw).double()
    cov = patches.t() @ patches / len(patches)
    evals, evecs = torch.linalg.eigh(cov)                             # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    filters = (evecs.t() / (evals.clamp_min(0) + eps).sqrt().unsqueeze(1)).reshape(-1, c, kh, kw)
    conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight.dtype))
    return model


@register("fastcnn")
def fastcnn(input_shape, num_classes, widths=(32, 64, 128), scale: float = 1 / 9):
    """The fast CIFAR network of the ``book`` profile (~0.3 M parameters)."""
    return FastCNN(input_shape[0], num_classes, widths=widths, scale=scale)


register("fastcnn94")(lambda s, k: FastCNN(s[0], k, widths=(64, 256, 256)))


MODELS = tuple(REGISTRY)
