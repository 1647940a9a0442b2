"""Closed-form Gram matrix of per-example gradients vs torch.func (vmap of grad)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nlutils import models
from nlutils.methods import gradsim


def _data(shape, m=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, *shape, generator=g, dtype=torch.float64), torch.randint(0, 10, (m,), generator=g)


def _all_grads(model, x, y, names=None):
    names = names or [n for n, _ in model.named_parameters()]
    return gradsim.per_example_grads(model, x, y, names)


@pytest.mark.parametrize("name,shape", [("mlp", (1, 8, 8)), ("lenet5", (3, 32, 32))])
def test_gram_all_layers_matches_per_example_gradients(name, shape):
    model = models.build(name, shape, 10, seed=0).double()
    x, y = _data(shape)
    G, _ = gradsim.gram_matrix(model, x, y, layers="all")
    g = _all_grads(model, x, y)
    assert torch.allclose(G, g @ g.t(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,shape", [("mlp", (1, 8, 8)), ("lenet5", (3, 32, 32))])
def test_gram_last_layer_matches_per_example_gradients(name, shape):
    model = models.build(name, shape, 10, seed=1).double()
    x, y = _data(shape, seed=1)
    G, _ = gradsim.gram_matrix(model, x, y, layers="last")
    last = [n for n, _ in model.named_parameters()][-2:]  # weight and bias of the last Linear
    g = _all_grads(model, x, y, last)
    assert torch.allclose(G, g @ g.t(), rtol=1e-9, atol=1e-12)


def test_similarity_weights_top_k_and_normalisation():
    C = torch.tensor([[1.0, 0.9, 0.1, -0.5],
                      [0.9, 1.0, 0.2, -0.4],
                      [0.1, 0.2, 1.0, 0.0],
                      [-0.5, -0.4, 0.0, 1.0]])
    w = gradsim.similarity_weights(C, a=1.0, k=1)
    raw = torch.exp(torch.tensor([0.9, 0.9, 0.2, 0.0]))
    assert torch.allclose(w, raw / raw.sum())
    w_all = gradsim.similarity_weights(C, a=2.0, k=None)
    raw = torch.exp(2 * C).sum(1) - torch.exp(2 * C.diagonal())
    assert torch.allclose(w_all, raw / raw.sum())
    # within-class: example 3 has no partner of its class and gets weight 0
    w_cls = gradsim.similarity_weights(C, a=1.0, k=None, same_class=torch.tensor([0, 0, 1, 2]))
    assert w_cls[3] == 0 and w_cls[2] == 0 and torch.allclose(w_cls[:2], torch.full((2,), 0.5))


def test_decoupled_ranking_drops_the_right_examples():
    G = torch.eye(10, dtype=torch.float64) + 0.5
    G[0, 1:] = G[1:, 0] = -0.4  # example 0 disagrees with everyone
    hook = gradsim.GradSimReweight(a=4, k=None, weighting="drop_bottom", fraction=0.2)
    w = hook.weights(G, torch.zeros(10, dtype=torch.long))
    assert w[0] == 0 and int((w == 0).sum()) == 2 and abs(float(w.sum()) - 1) < 1e-12
    top = gradsim.GradSimReweight(a=4, k=None, weighting="drop_top", fraction=0.4)
    w = top.weights(G, torch.zeros(10, dtype=torch.long))
    assert w[0] > 0 and int((w == 0).sum()) == 4


def test_hook_returns_the_weighted_loss_and_records():
    model = models.build("mlp", (1, 8, 8), 10, seed=0)
    x, y = _data((1, 8, 8))
    x = x.float()
    hook = gradsim.GradSimReweight()
    loss = hook(model, x, y, rows=torch.arange(24))
    rows, w, step = hook.pop_history()
    assert torch.equal(step, torch.zeros(24, dtype=torch.long))
    per = F.cross_entropy(model(x), y, reduction="none")
    assert torch.allclose(loss, (w * per).sum()) and loss.requires_grad
    assert abs(float(w.sum()) - 1) < 1e-6
    with pytest.raises(ValueError):
        gradsim.GradSimReweight(weighting="median")


def test_noisy_examples_rank_low_on_a_trained_network(digits):
    """The method's premise, checked: after a little training, flipped labels get less weight."""
    from nlutils import noise, train
    nl = noise.symmetric(digits.y_train, 0.4, 10, seed=0)
    model = models.build("mlp", digits.input_shape, 10, seed=0)
    train.fit(model, digits.x_train, nl.noisy, epochs=5, lr=3e-3, progress=False)
    hook = gradsim.GradSimReweight(a=4, k=4)
    rows = torch.arange(256)
    hook(model, digits.x_train[rows], nl.noisy[rows], rows)
    _, w, _ = hook.pop_history()
    assert w[nl.is_noisy[rows]].mean() < 0.5 * w[~nl.is_noisy[rows]].mean()
