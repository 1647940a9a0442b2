import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nlutils import noise
from nlutils.methods import correction, robust_losses


def _T(c=4, rate=0.3):
    T = torch.full((c, c), rate / (c - 1), dtype=torch.float64)
    T.fill_diagonal_(1 - rate)
    return T


def test_identity_T_gives_cross_entropy():
    torch.manual_seed(0)
    z, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    ce = F.cross_entropy(z, y, reduction="none")
    eye = torch.eye(4)
    assert torch.allclose(correction.ForwardCorrection(eye)(z, y), ce, atol=1e-5)
    assert torch.allclose(correction.BackwardCorrection(eye)(z, y), ce, atol=1e-5)


def test_forward_and_backward_match_their_definitions():
    torch.manual_seed(1)
    T = _T()
    z, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 4, (5,))
    p = z.softmax(1)
    fwd = correction.forward_loss(z, y, T)
    assert torch.allclose(fwd, -torch.log((T.t() @ p.t()).t()[torch.arange(5), y]))
    bwd = correction.backward_loss(z, y, torch.linalg.inv(T))
    manual = torch.stack([(torch.linalg.inv(T) @ -p[i].log())[y[i]] for i in range(5)])
    assert torch.allclose(bwd, manual)


def test_backward_is_unbiased_under_the_noise():
    """E over ỹ ~ T[y] of ℓ←(ỹ) equals the clean loss ℓ(y), for every y and prediction."""
    torch.manual_seed(2)
    T = _T(4, 0.4)
    z = torch.randn(3, 4, dtype=torch.float64)
    T_inv = torch.linalg.inv(T)
    for y in range(4):
        expected = sum(T[y, j] * correction.backward_loss(z, torch.full((3,), j), T_inv) for j in range(4))
        assert torch.allclose(expected, F.cross_entropy(z, torch.full((3,), y), reduction="none"))


def test_nonneg_backward_is_the_sum_of_the_positive_partial_risks():
    """Batch mean = sum_j max(0, R_j), R_j = mean_i (T^-1)[ỹ_i, j] ℓ(e^j, p_i) (Ishida et al. 2019);
    a label j whose partial risk is negative gets no gradient; with no negative R_j it is
    the plain backward loss."""
    T = _T(3, 0.6)  # strongly negative off-diagonal entries in T^-1
    T_inv = torch.linalg.inv(T)
    y = torch.tensor([0, 0, 0, 1])
    z = torch.tensor([[-9.0, 0.0, 0.0], [-9.0, 0.0, 0.0], [-9.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                     dtype=torch.float64, requires_grad=True)
    terms = T_inv[y] * -z.softmax(1).log()
    R = terms.mean(0)
    assert (R < 0).any() and (R > 0).any()  # the case the correction is for
    out = correction.backward_loss(z, y, T_inv, nonneg=True)
    assert torch.allclose(out.mean(), R.clamp_min(0).sum())
    assert out.mean() > correction.backward_loss(z, y, T_inv).mean()
    # the negative partial risks carry no gradient: same gradient as the kept terms alone
    out.mean().backward()
    keep = (R >= 0).detach()
    z2 = z.detach().clone().requires_grad_(True)
    ((T_inv[y] * -z2.softmax(1).log()) * keep).sum(1).mean().backward()
    assert torch.allclose(z.grad, z2.grad)
    # no negative partial risk: identical to the plain correction, per example
    z3, y3 = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 3, (8,))
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(correction.BackwardCorrection(eye, nonneg=True)(z3, y3),
                          correction.backward_loss(z3, y3, eye))


def test_singular_or_bad_T_is_refused():
    with pytest.raises(ValueError, match="singular or ill-conditioned"):
        correction.BackwardCorrection(torch.full((3, 3), 1 / 3))
    with pytest.raises(ValueError, match="singular or ill-conditioned"):
        correction.ForwardCorrection(torch.tensor([[0.5, 0.5], [0.5 + 1e-9, 0.5 - 1e-9]]))
    with pytest.raises(ValueError, match="row-stochastic"):
        correction.check_invertible(torch.tensor([[0.9, 0.2], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        correction.check_invertible(torch.ones(2, 3) / 3)


def test_estimator_recovers_T_from_perfect_examples_and_skips_outliers():
    c = 3
    T = torch.tensor([[0.8, 0.2, 0.0], [0.0, 0.7, 0.3], [0.1, 0.0, 0.9]], dtype=torch.float64)
    rng = np.random.default_rng(0)
    # 100 blurry examples, one "perfect" example per class giving p(ỹ|x) = T[i]
    blur = torch.tensor(rng.dirichlet(np.ones(c), 100) * 0.5 + 0.5 / c)
    probs = torch.cat([blur, T])
    assert torch.allclose(correction.estimate_T(probs, percentile=None), T)
    # an outlier above everything in column 0 is picked by argmax but not by the robust variant
    outlier = torch.tensor([[0.999, 0.0005, 0.0005]], dtype=torch.float64)
    probs2 = torch.cat([probs, outlier])
    assert torch.allclose(correction.estimate_T(probs2, percentile=None)[0], outlier[0])
    robust = correction.estimate_T(probs2, percentile=99.5)
    assert torch.allclose(robust[0], T[0])
    assert torch.allclose(robust.sum(1), torch.ones(c, dtype=torch.float64))
    before = probs2.clone()
    correction.estimate_T(probs2)
    assert torch.equal(probs2, before)  # the public code zeroes entries of its input in place
    err = correction.estimation_error(correction.estimate_T(probs, percentile=None), T)
    assert err["frobenius"] == pytest.approx(0.0, abs=1e-12)
    assert correction.estimation_error(robust, T)["frobenius"] > 0.1  # other rows lost their perfect example


def test_forward_correction_learns_the_clean_classifier_on_synthetic_noise():
    """Logistic regression on 2-D blobs, labels flipped by a known asymmetric T: forward
    correction recovers the clean decision rule where cross-entropy is pulled off it."""
    g = torch.Generator().manual_seed(0)
    n, c = 3000, 3
    y = torch.randint(0, c, (n,), generator=g)
    centers = torch.tensor([[0.0, 2.0], [2.0, -1.0], [-2.0, -1.0]])
    x = centers[y] + 0.9 * torch.randn(n, 2, generator=g)
    T = torch.tensor([[0.55, 0.45, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    nl = noise.from_transition(y, T, seed=0)

    def train(loss_fn):
        torch.manual_seed(0)
        lin = torch.nn.Linear(2, c)
        opt = torch.optim.Adam(lin.parameters(), lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            loss_fn(lin(x), nl.noisy).mean().backward()
            opt.step()
        return float((lin(x).argmax(1) == y).float().mean())

    ce = train(lambda z, t: F.cross_entropy(z, t, reduction="none"))
    fwd = train(correction.ForwardCorrection(T))
    assert fwd > ce + 0.05
    assert fwd > 0.9


@pytest.mark.parametrize("name", sorted(robust_losses.LOSSES))
def test_comparison_losses_decrease_in_the_true_class_probability(name):
    fn = robust_losses.LOSSES[name]
    y = torch.tensor([0])
    values = [float(fn(torch.tensor([[s, 0.0, 0.0]]), y)) for s in (-2.0, 0.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    z = torch.randn(4, 3, requires_grad=True)
    fn(z, torch.tensor([0, 1, 2, 0])).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_bootstrap_with_beta_one_is_cross_entropy():
    z, y = torch.randn(5, 4), torch.randint(0, 4, (5,))
    ce = F.cross_entropy(z, y, reduction="none")
    assert torch.allclose(robust_losses.bootstrap_soft(z, y, beta=1.0), ce, atol=1e-5)
    assert torch.allclose(robust_losses.bootstrap_hard(z, y, beta=1.0), ce, atol=1e-5)
