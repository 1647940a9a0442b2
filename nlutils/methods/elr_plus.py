r"""ELR+ (Liu et al., NeurIPS 2020, section 4): ELR with two networks, mixup and weight averaging.

ELR (:mod:`nlutils.elr`) regularises a network towards running averages of its own
predictions. ELR+ adds three tools from semi-supervised learning, all of them about making
those targets better:

* **weight averaging** — each network :math:`k` keeps an exponential moving average of its
  weights, :math:`\bar\theta_k \leftarrow \alpha\bar\theta_k + (1-\alpha)\theta_k`
  (:math:`\alpha = 0.997`, ramped in as :math:`\min(\alpha, 1 - 1/(s+1))` at step :math:`s`);
* **two networks** — the targets of network :math:`k` are built from the *other* network's
  averaged weights, so a network does not confirm its own mistakes:
  :math:`t^{(k)}_i \leftarrow \beta t^{(k)}_i + (1-\beta)\,\hat p_i/\lVert\hat p_i\rVert_1`,
  :math:`\hat p_i = \mathrm{clip}(\mathrm{softmax}(f_{\bar\theta_{1-k}}(x_i)))`;
* **mixup** — with :math:`\ell\sim\mathrm{Beta}(a, a)`, :math:`\ell\leftarrow\max(\ell, 1-\ell)`
  and a permutation :math:`\pi` of the batch, the network sees
  :math:`\tilde x_i=\ell x_i+(1-\ell)x_{\pi(i)}` and is trained towards the mixed one-hot
  labels and mixed targets :math:`q_i=\ell t_i+(1-\ell)t_{\pi(i)}`:

.. math::

    \mathcal L_k = -\frac1m\sum_i \tilde y_i^\top\log p_i
                   + \lambda\, r(s)\,\frac1m\sum_i \log\big(1-\langle q_i, p_i\rangle\big),

with :math:`r(s) = \exp(-5(1-\min(s/S,1))^2)` the sigmoid-shaped ramp-up of :math:`\lambda`
over :math:`S` steps. Predictions average the softmax outputs of the two averaged networks.

Example (with :func:`nlutils.train.fit`, whose optimizer then updates both networks)::

    pair = ELRPlus(lambda: make_net(), num_examples=len(y), num_classes=10)
    fit(pair, x, y, step_loss=pair.step_loss, ...)
    probs = pair(x_test).exp()        # eval mode: log of the averaged probabilities

Depends on torch and numpy only.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ELRPlus"]


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 (autocast output) to float32; float32 and float64 unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class ELRPlus(nn.Module):
    """Two networks, their weight averages and one target per example and network."""

    def __init__(self, make_net: Callable[[], nn.Module], num_examples: int, num_classes: int,
                 lam: float = 3.0, beta: float = 0.7, mixup_alpha: float = 1.0,
                 ema_decay: float = 0.997, rampup_steps: int = 0, seed: int = 0):
        super().__init__()
        if lam < 0 or not 0 <= beta < 1 or mixup_alpha < 0 or not 0 <= ema_decay < 1:
            raise ValueError("need lam >= 0, 0 <= beta < 1, mixup_alpha >= 0, 0 <= ema_decay < 1")
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG stays untouched
            torch.manual_seed(seed)
            self.nets = nn.ModuleList([make_net(), make_net()])
        self.averaged = nn.ModuleList([copy.deepcopy(n) for n in self.nets])
        for p in self.averaged.parameters():
            p.requires_grad_(False)  # no gradient: optimizers skip them
        self.register_buffer("target", torch.zeros(2, num_examples, num_classes))
        self.lam, self.beta, self.mixup_alpha = float(lam), float(beta), float(mixup_alpha)
        self.ema_decay, self.rampup_steps = float(ema_decay), int(rampup_steps)
        self.steps, self._pending = 0, False
        self._rng = np.random.default_rng(seed)
        self._gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def _average(self):
        """Moves the averaged weights towards the live ones (after the optimizer step that
        the last :meth:`step_loss` fed; done lazily because the loop owns the optimizer)."""
        if not self._pending:
            return
        a = min(self.ema_decay, 1 - 1 / self.steps)
        for net, avg in zip(self.nets, self.averaged):
            for p_avg, p in zip(avg.parameters(), net.parameters()):
                p_avg.mul_(a).add_(p, alpha=1 - a)
            for b_avg, b in zip(avg.buffers(), net.buffers()):
                b_avg.copy_(b)
        self._pending = False

    def ramp(self) -> float:
        if self.rampup_steps <= 0:
            return 1.0
        t = min(self.steps / self.rampup_steps, 1.0)
        return math.exp(-5.0 * (1.0 - t) ** 2)

    def step_loss(self, model, xb: torch.Tensor, yb: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Sum of both networks' ELR+ losses on one batch (each depends on its own weights only)."""
        self._average()
        rows = rows.to(self.target.device)
        m, K = len(yb), self.target.shape[2]
        lam_mix = float(self._rng.beta(self.mixup_alpha, self.mixup_alpha)) if self.mixup_alpha > 0 else 1.0
        lam_mix = max(lam_mix, 1 - lam_mix)
        perm = torch.randperm(m, generator=self._gen).to(xb.device)
        x_mix = lam_mix * xb + (1 - lam_mix) * xb[perm]
        onehot = F.one_hot(yb, K).to(xb.dtype)
        y_mix = lam_mix * onehot + (1 - lam_mix) * onehot[perm]
        total = 0.0
        for k in (0, 1):
            with torch.no_grad():
                self.averaged[1 - k].train(self.nets[k].training)
                p_hat = _upcast(self.averaged[1 - k](xb)).softmax(1).clamp(1e-4, 1 - 1e-4)
                t = self.beta * self.target[k, rows] + (1 - self.beta) * p_hat / p_hat.sum(1, keepdim=True)
                self.target[k, rows] = t
                q = lam_mix * t + (1 - lam_mix) * t[perm]
            logits = _upcast(self.nets[k](x_mix))  # loss and targets in float32 under bf16
            p = logits.softmax(1).clamp(1e-4, 1 - 1e-4)
            ce = -(y_mix * logits.log_softmax(1)).sum(1).mean()
            reg = torch.log(1 - (q * p).sum(1)).mean()
            total = total + ce + self.lam * self.ramp() * reg
        self.steps += 1
        self._pending = True
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the two averaged networks' mean probabilities (usable as logits)."""
        self._average()
        for avg in self.averaged:
            avg.train(self.training)
        p = sum(_upcast(avg(x)).softmax(1) for avg in self.averaged) / 2
        return p.clamp_min(1e-12).log()

    @torch.no_grad()
    def suspects(self, labels: torch.Tensor) -> torch.Tensor:
        """Examples whose averaged target's argmax disagrees with the given label."""
        return self.target.mean(0).argmax(1).cpu() != labels.cpu()
