import pytest
import torch

from nlutils import noise


@pytest.fixture
def labels():
    g = torch.Generator().manual_seed(0)
    # unbalanced classes on purpose
    return torch.cat([torch.full((n,), c) for c, n in enumerate([100, 230, 57, 400, 91, 100, 100, 133, 88, 701])])[
        torch.randperm(2000, generator=g)]


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.8])
def test_symmetric_flip_counts_are_exact(labels, rate):
    nl = noise.symmetric(labels, rate, 10, seed=3)
    for c in range(10):
        members = labels == c
        flipped = int(nl.is_noisy[members].sum())
        assert abs(flipped - rate * int(members.sum())) <= 1  # one example of rounding at most
        # spread evenly over the other classes: counts differ by at most one
        other = torch.bincount(nl.noisy[members & nl.is_noisy], minlength=10)
        other = torch.cat([other[:c], other[c + 1:]])
        assert int(other.max() - other.min()) <= 1
    assert not torch.any(nl.noisy[nl.is_noisy] == labels[nl.is_noisy])
    assert torch.equal(nl.clean, labels)
    assert torch.allclose(nl.T_realised.sum(1), torch.ones(10, dtype=torch.float64))
    assert float((nl.T_realised - nl.T).abs().max()) <= 1 / 57 + 1e-12


def test_symmetric_including_true_class_changes_fewer_labels(labels):
    nl = noise.symmetric(labels, 0.4, 10, seed=0, include_true=True)
    assert abs(nl.rate - 0.4 * 9 / 10) < 0.005
    assert torch.allclose(nl.T.diag(), torch.full((10,), 0.64, dtype=torch.float64))


def test_seeded_and_deterministic(labels):
    a = noise.symmetric(labels, 0.4, 10, seed=5)
    b = noise.symmetric(labels, 0.4, 10, seed=5)
    c = noise.symmetric(labels, 0.4, 10, seed=6)
    assert torch.equal(a.noisy, b.noisy)
    assert not torch.equal(a.noisy, c.noisy)


def test_patrini_presets():
    T = noise.pairwise_T("patrini_cifar10", 0.3)
    assert T[9, 1] == pytest.approx(0.3) and T[9, 9] == pytest.approx(0.7)
    assert T[3, 5] == pytest.approx(0.3) and T[5, 3] == pytest.approx(0.3)
    assert T[2, 0] == pytest.approx(0.3) and T[4, 7] == pytest.approx(0.3)
    assert T[0, 0] == 1 and T[6, 6] == 1
    y = torch.arange(10).repeat(100)
    nl = noise.pairwise(y, "patrini_mnist", 0.4, seed=0)
    moved = {(int(a), int(b)) for a, b in zip(nl.clean[nl.is_noisy], nl.noisy[nl.is_noisy])}
    assert moved == {(2, 7), (3, 8), (5, 6), (6, 5), (7, 1)}
    assert nl.rate == pytest.approx(5 * 40 / 1000)
    with pytest.raises(ValueError, match="preset"):
        noise.pairwise_T("imagenet", 0.2)


def test_from_transition_rejects_bad_matrices(labels):
    with pytest.raises(ValueError, match="row-stochastic"):
        noise.from_transition(labels, torch.full((10, 10), 0.2))
    with pytest.raises(ValueError, match="square"):
        noise.from_transition(labels, torch.ones(10, 9) / 9)
    T = torch.eye(10)
    T[0] = torch.tensor([0.5, 0.6, -0.1] + [0.0] * 7)
    with pytest.raises(ValueError, match="row-stochastic"):
        noise.check_transition(T)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rates_outside_unit_interval(labels, rate):
    with pytest.raises(ValueError, match="rate"):
        noise.symmetric(labels, rate, 10)


def test_massive_noise_is_an_index_map(labels):
    m = noise.massive(labels, alpha=5, num_classes=10, seed=0)
    n = len(labels)
    assert len(m) == 6 * n
    assert torch.equal(m.index[:n], torch.arange(n)) and torch.equal(m.labels[:n], labels)
    assert torch.equal(torch.bincount(m.index), torch.full((n,), 6))
    assert m.is_added.sum() == 5 * n
    # the added labels are uniform over all classes, the true one included, per class exactly
    added_true = labels[m.index[m.is_added]]
    for c in range(10):
        counts = torch.bincount(m.labels[m.is_added][added_true == c], minlength=10)
        assert int(counts.max() - counts.min()) <= 1
    assert abs(float(m.is_noisy[m.is_added].double().mean()) - 0.9) < 0.01
    again = noise.massive(labels, alpha=5, num_classes=10, seed=0)
    assert torch.equal(m.labels, again.labels)
    with pytest.raises(ValueError, match="alpha"):
        noise.massive(labels, alpha=-1, num_classes=10)


def test_massive_alpha_zero(labels):
    m = noise.massive(labels, 0, 10)
    assert len(m) == len(labels) and not m.is_noisy.any()


def test_corrupt_dispatch(labels):
    assert noise.corrupt(labels, "none", 0.5, 10).rate == 0
    assert noise.corrupt(labels, "symmetric", 0.2, 10).rate == pytest.approx(0.2, abs=0.005)
    with pytest.raises(ValueError, match="noise="):
        noise.corrupt(labels, "gaussian", 0.2, 10)


def test_blog_fixed_other_class_noise():
    T, fixed = noise.fixed_other_T(0.8, 10, seed=0)
    assert torch.allclose(T.sum(1), torch.ones(10, dtype=torch.float64))
    for i, c in enumerate(fixed):
        assert c != i and T[i, c] == pytest.approx(0.16) and T[i, i] == pytest.approx(0.2)
    y = torch.arange(10).repeat(500)
    nl = noise.from_transition(y, T, seed=1)
    assert nl.rate == pytest.approx(0.8)
    # the fixed class receives twice the share of any other wrong class
    for i, c in enumerate(fixed):
        counts = torch.bincount(nl.noisy[y == i], minlength=10)
        assert int(counts[c]) == 80 and int(counts[(c + 1) % 10 if (c + 1) % 10 != i else (c + 2) % 10]) == 40


def test_rounding_remainder_goes_to_classes_chosen_by_the_seed():
    """10 examples per class at 40% symmetric noise: 4 flips over 9 other classes, so 4 of
    them get one example each. Which 4 must depend on the seed, not on the class index."""
    y = torch.arange(10).repeat_interleave(10)
    rows0 = set()
    for seed in range(6):
        nl = noise.symmetric(y, 0.4, 10, seed=seed)
        assert nl.is_noisy.sum() == 40
        T = nl.T_realised
        assert torch.allclose(T.sum(1), torch.ones(10, dtype=torch.float64))
        assert all(abs(T[i, i] - 0.6) < 1e-12 for i in range(10))
        rows0.add(tuple(T[0].tolist()))
    assert len(rows0) > 1, "the same classes always received the rounding remainder"
