import pytest
import torch
from sklearn.metrics import roc_auc_score

from nlutils.methods import detection


def test_auroc_matches_sklearn_with_ties():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(500, generator=g) < 0.3
    s = (m.double() + torch.randn(500, generator=g, dtype=torch.float64)).round(decimals=1)
    assert detection.auroc(s, m) == pytest.approx(100 * roc_auc_score(m.numpy(), s.numpy()), abs=1e-9)
    assert detection.auroc(m.double(), m) == pytest.approx(100.0)
    assert detection.auroc(-m.double(), m) == pytest.approx(0.0)
    assert detection.auroc(torch.zeros(10), m[:10]) == pytest.approx(50.0)


def test_precision_recall_at_true_count():
    m = torch.tensor([True, True, False, False, False])
    s = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.0])
    assert detection.precision_recall_at_k(s, m) == (50.0, 50.0)
    assert detection.precision_recall_at_k(s, m, k=3) == pytest.approx((100 / 3, 50.0))


def test_posterior_noisy_is_bayes_rule():
    T = torch.tensor([[0.6, 0.4], [0.0, 1.0]], dtype=torch.float64)
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    # label 1 seen: p(noisy=1) = 0.5*0.4 + 0.5*1.0 = 0.7, clean part 0.5 -> noisy prob 0.2/0.7
    out = detection.posterior_noisy(p, torch.tensor([1, 0]), T)
    assert out[0] == pytest.approx(0.2 / 0.7)
    assert out[1] == pytest.approx(0.0)


def test_mean_by_row():
    pairs = [(torch.tensor([0, 2]), torch.tensor([1.0, 3.0])), (torch.tensor([0]), torch.tensor([3.0]))]
    out = detection.mean_by_row(pairs, 4)
    assert out[0] == 2.0 and out[2] == 3.0 and torch.isnan(out[1]) and torch.isnan(out[3])
