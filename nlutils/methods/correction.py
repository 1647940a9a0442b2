r"""Loss correction with a noise transition matrix (Patrini, Rozza, Menon, Nock & Qu, CVPR 2017).

Labels are corrupted by a row-stochastic matrix :math:`T_{ij} = p(\tilde y = j \mid y = i)`.
Write :math:`\boldsymbol\ell(p) = (\ell(e^1, p), \dots, \ell(e^c, p))^\top` for the vector of a
base loss's values at every possible label (for cross-entropy, :math:`-\log p`). Two
corrections make training on noisy labels minimise, in expectation over the noise, the
clean risk (if :math:`T` is non-singular):

.. math::

    \text{backward:}\quad \boldsymbol\ell^{\leftarrow}(p) = T^{-1}\boldsymbol\ell(p), \qquad
    \text{forward:}\quad \boldsymbol\ell^{\rightarrow}(p) = \boldsymbol\ell(T^{\top} p),

and the loss of an example with noisy label :math:`\tilde y` is the :math:`\tilde y`-th entry.
Backward is unbiased for any loss but its weights :math:`T^{-1}` can be large and negative;
forward "noisifies" the prediction and needs a proper composite loss (cross-entropy is).

**Non-negative backward correction.** Split the backward-corrected risk of a batch by the
candidate true label :math:`j`,

.. math::

    \hat R = \sum_j \hat R_j, \qquad
    \hat R_j = \frac1n \sum_i (T^{-1})_{\tilde y_i j}\, \ell(e^j, p_i),

each :math:`\hat R_j` estimating :math:`E[\mathbb 1\{y = j\}\, \ell(e^j, p)] \ge 0`. A flexible
network drives some :math:`\hat R_j` below zero, which only over-fitting can do; the
max-operator correction of Ishida et al. (ICML 2019, after Kiryo et al.'s non-negative PU
risk, NeurIPS 2017) trains on :math:`\sum_j \max(0, \hat R_j)` instead
(``backward_loss(..., nonneg=True)``).

:math:`T` is rarely known. The estimator assumes "perfect examples": for every class
:math:`i`, an :math:`\bar x^i` that surely belongs to :math:`i`, so that a network trained on
the noisy labels predicts :math:`p(\tilde y \mid \bar x^i) = T_{i,:}`:

.. math::

    \bar x^i = \operatorname*{argmax}_{x} \hat p(\tilde y = i \mid x), \qquad
    \hat T_{ij} = \hat p(\tilde y = j \mid \bar x^i).

The robust variant (the paper's choice on CIFAR) first discards the examples at or above
the 97th percentile of :math:`\hat p(\tilde y = i \mid x)`, which are often outliers.

Example::

    T_hat = estimate_T(probs_on_train)               # probs of a net trained on noisy labels
    loss_fn = ForwardCorrection(T_hat)              # or BackwardCorrection(T_hat)
    loss = loss_fn(logits, noisy_labels).mean()

Depends on torch only.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["check_invertible", "cross_entropy_vector", "forward_loss", "backward_loss",
           "ForwardCorrection", "BackwardCorrection", "estimate_T", "estimation_error"]

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before the log (as Keras does)


def check_invertible(T, max_condition: float = 1e6) -> torch.Tensor:
    """``T`` as a float64 tensor after checking that it is a square, row-stochastic and
    well-conditioned matrix; ``ValueError`` otherwise (backward correction needs
    :math:`T^{-1}`, and both corrections lose their guarantee for a singular ``T``)."""
    T = torch.as_tensor(T, dtype=torch.float64)
    if T.ndim != 2 or T.shape[0] != T.shape[1] or T.shape[0] < 2:
        raise ValueError(f"T must be a square c x c matrix with c >= 2, got shape {tuple(T.shape)}")
    if (T < -1e-12).any() or not torch.allclose(T.sum(1), torch.ones(len(T), dtype=T.dtype), atol=1e-6):
        raise ValueError("T must be row-stochastic: entries >= 0 and every row summing to 1")
    cond = float(torch.linalg.cond(T))
    if not cond < max_condition:  # also catches inf and nan
        raise ValueError(f"T is singular or ill-conditioned (condition number {cond:.3g} >= "
                         f"{max_condition:.0e}); loss correction is undefined for it")
    return T


def cross_entropy_vector(p: torch.Tensor) -> torch.Tensor:
    """:math:`\\boldsymbol\\ell(p) = -\\log p`: the cross-entropy for every candidate label, (n, c)."""
    return -p.clamp(EPS, 1 - EPS).log()


def forward_loss(logits, labels, T, base: Callable = cross_entropy_vector) -> torch.Tensor:
    """Per-example :math:`\\ell(T^\\top p)_{\\tilde y}` with :math:`p = \\mathrm{softmax}(z)`."""
    T = torch.as_tensor(T, dtype=logits.dtype, device=logits.device)
    p_noisy = logits.softmax(1) @ T        # row i: (T^T p_i)^T
    return base(p_noisy).gather(1, labels.view(-1, 1)).squeeze(1)


def backward_loss(logits, labels, T_inv, base: Callable = cross_entropy_vector,
                  nonneg: bool = False) -> torch.Tensor:
    """Per-example :math:`(T^{-1}\\boldsymbol\\ell(p))_{\\tilde y}`; pass the *inverse* of T.

    ``nonneg``: drop, for the whole batch, the terms of every candidate label :math:`j` whose
    partial risk :math:`\\hat R_j` is negative, so that the batch mean is
    :math:`\\sum_j \\max(0, \\hat R_j)` (Ishida et al. 2019)."""
    T_inv = torch.as_tensor(T_inv, dtype=logits.dtype, device=logits.device)
    terms = T_inv[labels] * base(logits.softmax(1))     # (n, c): (T^-1)_{ỹ_i j} ℓ(e^j, p_i)
    if nonneg:
        terms = terms * (terms.mean(0) >= 0).detach()    # keep label j iff R̂_j >= 0
    return terms.sum(1)


class ForwardCorrection(nn.Module):
    """Forward-corrected loss as a module: ``loss_fn(logits, labels, rows=None)`` per example."""

    def __init__(self, T, base: Callable = cross_entropy_vector, max_condition: float = 1e6):
        super().__init__()
        self.register_buffer("T", check_invertible(T, max_condition).to(torch.get_default_dtype()))
        self.base = base

    def forward(self, logits, labels, rows=None):
        return forward_loss(logits, labels, self.T, self.base)


class BackwardCorrection(nn.Module):
    """Backward-corrected loss as a module; :math:`T^{-1}` is computed once, in float64.
    ``nonneg=True``: the non-negative (max-operator) correction, whose per-example values
    depend on the batch (use their mean)."""

    def __init__(self, T, base: Callable = cross_entropy_vector, max_condition: float = 1e6,
                 nonneg: bool = False):
        super().__init__()
        self.register_buffer("T_inv", torch.linalg.inv(check_invertible(T, max_condition))
                             .to(torch.get_default_dtype()))
        self.base = base
        self.nonneg = nonneg

    def forward(self, logits, labels, rows=None):
        return backward_loss(logits, labels, self.T_inv, self.base, self.nonneg)


def estimate_T(probs: torch.Tensor, percentile: float | None = 97.0) -> torch.Tensor:
    """:math:`\\hat T` from predicted noisy-label probabilities ``probs`` (n, c).

    Row ``i`` is ``probs[j]`` for the example ``j`` with the largest ``probs[:, i]`` among
    those strictly below the ``percentile``-th percentile of that column (``None``: the
    plain argmax), then rows are normalised to sum to 1. Nothing in ``probs`` is modified.
    """
    probs = torch.as_tensor(probs, dtype=torch.float64)
    if probs.ndim != 2 or len(probs) < 2:
        raise ValueError(f"probs must be an (n, c) matrix with n >= 2, got {tuple(probs.shape)}")
    c = probs.shape[1]
    T = torch.empty(c, c, dtype=torch.float64)
    for i in range(c):
        col = probs[:, i]
        if percentile is not None:
            if not 0 < percentile <= 100:
                raise ValueError(f"percentile={percentile} must lie in (0, 100]")
            # NumPy's old interpolation="higher": the smallest observed value at or above the quantile
            thresh = torch.quantile(col, percentile / 100, interpolation="higher")
            col = torch.where(col < thresh, col, torch.full_like(col, -1.0))
        T[i] = probs[int(col.argmax())]
    return T / T.sum(1, keepdim=True)


def estimation_error(T_hat, T) -> dict:
    """How far :math:`\\hat T` is from the true ``T``: Frobenius norm, the largest absolute
    entry error and the mean absolute error of the diagonal."""
    T_hat, T = torch.as_tensor(T_hat, dtype=torch.float64), torch.as_tensor(T, dtype=torch.float64)
    d = T_hat - T
    return {"frobenius": float(d.norm()), "max_abs": float(d.abs().max()),
            "diag_mae": float(d.diagonal().abs().mean())}
