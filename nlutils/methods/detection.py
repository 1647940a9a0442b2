r"""Scoring how well a per-example "noisiness" score finds the wrong labels.

Every method of the book can rank training examples by how suspicious their label is: a
large cross-entropy loss (small-loss selection), a low meta-weight (L2RW) or
gradient-similarity weight, an ELR target that disagrees with the label, or a low
posterior probability that the label is right. Given the true noise mask
:math:`m_i = [\tilde y_i \neq y_i]`, a score :math:`s` (larger = more suspicious) is judged by

* the **AUROC**: the probability that a random wrong-label example scores higher than a
  random clean one (ties count one half); 50% is chance;
* **precision and recall at k**: flag the :math:`k` highest scores; with :math:`k` the true
  number of wrong labels the two are equal.

With a noise matrix :math:`T` (true or estimated) and a model of the *clean* posterior
:math:`p(y\mid x)` (for example a forward-corrected network), Bayes' rule gives the
probability that the given label is right,

.. math::

    P(y = \tilde y \mid x, \tilde y) = \frac{p(y=\tilde y\mid x)\,T_{\tilde y\tilde y}}
                                          {\sum_i p(y=i\mid x)\,T_{i\tilde y}},

and :func:`posterior_noisy` returns one minus it.

Depends on torch only.
"""
from __future__ import annotations

import torch

__all__ = ["auroc", "precision_recall_at_k", "posterior_noisy", "mean_by_row"]


def auroc(score, is_noisy) -> float:
    """Area under the ROC curve in percent (Mann-Whitney U with average ranks for ties)."""
    s = torch.as_tensor(score, dtype=torch.float64).flatten()
    m = torch.as_tensor(is_noisy, dtype=torch.bool).flatten()
    n_pos, n_neg = int(m.sum()), int((~m).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    if torch.isnan(s).any():
        raise ValueError("score contains NaN")
    order = torch.argsort(s)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    # rank of each value among all, ties sharing their average rank
    _, inverse, counts = torch.unique(sorted_s, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1
    avg = (first + (counts - 1) / 2.0).to(torch.float64)
    ranks[order] = avg[inverse]
    u = float(ranks[m].sum()) - n_pos * (n_pos + 1) / 2
    return 100.0 * u / (n_pos * n_neg)


def precision_recall_at_k(score, is_noisy, k: int | None = None) -> tuple[float, float]:
    """Precision and recall (percent) of flagging the ``k`` highest scores (default: as many
    as there are wrong labels)."""
    s = torch.as_tensor(score, dtype=torch.float64).flatten()
    m = torch.as_tensor(is_noisy, dtype=torch.bool).flatten()
    k = int(m.sum()) if k is None else int(k)
    if k <= 0 or int(m.sum()) == 0:
        return float("nan"), float("nan")
    top = torch.argsort(s, descending=True, stable=True)[:k]
    tp = float(m[top].sum())
    return 100.0 * tp / k, 100.0 * tp / float(m.sum())


def posterior_noisy(probs_clean, labels, T) -> torch.Tensor:
    """One minus the posterior probability that the given label is the true class."""
    p = torch.as_tensor(probs_clean, dtype=torch.float64)
    T = torch.as_tensor(T, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    num = p.gather(1, y.view(-1, 1)).squeeze(1) * T[y, y]
    den = (p @ T).gather(1, y.view(-1, 1)).squeeze(1).clamp_min(1e-12)
    return 1.0 - (num / den).clamp(0.0, 1.0)


def mean_by_row(pairs, n: int) -> torch.Tensor:
    """Average of recorded per-step values by training row: ``pairs`` is a list of
    ``(rows, values)``; rows never recorded get NaN."""
    total = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    for rows, v in pairs:
        rows = torch.as_tensor(rows, dtype=torch.long)
        total.index_add_(0, rows, torch.as_tensor(v, dtype=torch.float64))
        count.index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
