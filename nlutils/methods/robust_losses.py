r"""The comparison losses of Patrini et al. (CVPR 2017, table on CIFAR-10).

Each takes logits ``z`` (n, c) and labels (n,), and returns the per-example loss. As in the
paper's public code, the margin losses act on the softmax output :math:`p` and the one-hot
label :math:`e^{y}\in\{0,1\}^c`, averaged over the :math:`c` classes:

.. math::

    \text{unhinged}\ (\text{van Rooyen et al. 2015}):\ \tfrac1c\sum_j \big(1 - e^y_j p_j\big), \qquad
    \text{sigmoid}\ (\text{Ghosh et al. 2015}):\ \tfrac1c\sum_j \sigma\big(-e^y_j p_j\big),

.. math::

    \text{Savage}\ (\text{Masnadi-Shirazi \& Vasconcelos 2009}):\
    \tfrac1c\sum_j \big(1 + e^{2 e^y_j p_j}\big)^{-2},

and the bootstrap losses of Reed et al. (2014) mix the label with the prediction:

.. math::

    \text{soft:}\ -\sum_j\big(\beta e^y_j + (1-\beta)p_j\big)\log p_j\ (\beta=0.95),\qquad
    \text{hard:}\ -\sum_j\big(\beta e^y_j + (1-\beta)e^{\hat y}_j\big)\log p_j\ (\beta=0.8),

with :math:`\hat y = \arg\max_j p_j`. Following the public code, the bootstrap targets are
not detached: the soft variant's gradient also flows through :math:`(1-\beta)p`.
Only the entries :math:`j=y` vary with the label in the margin losses, so each is a
decreasing function of :math:`p_y`; they differ in how fast they saturate, which is what
makes them robust (bounded) or not.

Depends on torch only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["unhinged", "sigmoid", "savage", "bootstrap_soft", "bootstrap_hard", "LOSSES"]

EPS = 1e-7


def _p_onehot(logits, labels):
    p = logits.softmax(1).clamp(EPS, 1 - EPS)
    return p, F.one_hot(labels, p.shape[1]).to(p.dtype)


def unhinged(logits, labels, rows=None):
    p, e = _p_onehot(logits, labels)
    return (1 - e * p).mean(1)


def sigmoid(logits, labels, rows=None):
    p, e = _p_onehot(logits, labels)
    return torch.sigmoid(-e * p).mean(1)


def savage(logits, labels, rows=None):
    p, e = _p_onehot(logits, labels)
    return (1 + torch.exp(2 * e * p)).pow(-2).mean(1)


def bootstrap_soft(logits, labels, rows=None, beta: float = 0.95):
    p, e = _p_onehot(logits, labels)
    return -((beta * e + (1 - beta) * p) * p.log()).sum(1)


def bootstrap_hard(logits, labels, rows=None, beta: float = 0.8):
    p, e = _p_onehot(logits, labels)
    hard = F.one_hot(p.argmax(1), p.shape[1]).to(p.dtype)
    return -((beta * e + (1 - beta) * hard) * p.log()).sum(1)


LOSSES = {"unhinged": unhinged, "sigmoid": sigmoid, "savage": savage,
          "bootstrap_soft": bootstrap_soft, "bootstrap_hard": bootstrap_hard}
