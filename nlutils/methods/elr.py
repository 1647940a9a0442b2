r"""Early-Learning Regularization (Liu, Niles-Weed, Razavian & Fernandez-Granda, NeurIPS 2020).

Networks trained on noisy labels first fit the clean labels ("early learning") and only
later memorise the wrong ones. ELR keeps, for every training example :math:`i`, a target
:math:`t_i` that is a running average of the network's own (early) predictions,

.. math::

    t_i \leftarrow \beta\, t_i + (1-\beta)\, \frac{p_i}{\lVert p_i\rVert_1}, \qquad
    p_i = \mathrm{clip}\big(\mathrm{softmax}(z_i), 10^{-4}, 1-10^{-4}\big),

and adds to cross-entropy a term that rewards agreeing with it:

.. math::

    \ell_i = -\log p_{i, y_i} + \lambda \log\big(1 - \langle t_i, p_i\rangle\big).

The gradient of the regulariser pushes :math:`p_i` towards :math:`t_i`, which cancels the
cross-entropy gradient of a memorised wrong label. :math:`t_i` is a constant in the backward
pass. The paper uses :math:`\lambda = 3, \beta = 0.7` for symmetric and
:math:`\lambda = 1, \beta = 0.9` for asymmetric noise on CIFAR-10. The README's way of
finding wrong labels is :meth:`ELRLoss.suspects`: the argmax of :math:`t_i` disagrees with
the given label.

Example::

    elr = ELRLoss(num_examples=len(y_train), num_classes=10, lam=3.0, beta=0.7)
    loss = elr(logits, labels, index).mean()     # index: positions of the batch in the set
    # with nlutils.train.fit: fit(..., loss_fn=elr)   (it passes (logits, labels, rows))

Depends on torch only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ELRLoss"]


class ELRLoss(nn.Module):
    """Cross-entropy plus the ELR term, with one target per training example (a buffer)."""

    def __init__(self, num_examples: int, num_classes: int, lam: float = 3.0, beta: float = 0.7):
        super().__init__()
        if num_examples < 1 or num_classes < 2:
            raise ValueError("num_examples must be >= 1 and num_classes >= 2")
        if lam < 0:
            raise ValueError(f"lam={lam} must be >= 0")
        if not 0 <= beta < 1:
            raise ValueError(f"beta={beta} must lie in [0, 1)")
        self.lam, self.beta = float(lam), float(beta)
        self.register_buffer("target", torch.zeros(num_examples, num_classes))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                reduction: str = "none") -> torch.Tensor:
        if logits.dtype in (torch.bfloat16, torch.float16):  # autocast output
            logits = logits.float()  # targets and loss in float32
        p = logits.softmax(1).clamp(1e-4, 1 - 1e-4)
        with torch.no_grad():
            q = p.detach()
            index = index.to(self.target.device)
            self.target[index] = self.beta * self.target[index] + (1 - self.beta) * (
                q / q.sum(1, keepdim=True)).to(self.target.dtype)
        t = self.target[index].to(p.dtype)
        loss = F.cross_entropy(logits, labels, reduction="none") + \
            self.lam * torch.log(1 - (t * p).sum(1))
        if reduction == "mean":
            return loss.mean()
        if reduction == "sum":
            return loss.sum()
        return loss

    @torch.no_grad()
    def suspects(self, labels: torch.Tensor) -> torch.Tensor:
        """Boolean mask of examples whose target's argmax disagrees with the given label."""
        return self.target.argmax(1).cpu() != labels.cpu()
