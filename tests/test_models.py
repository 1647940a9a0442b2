import pytest
import torch

from nlutils import models

SHAPES = {"conv4": (1, 28, 28), "lenet5": (3, 32, 32), "resnet32": (3, 32, 32), "resnet34": (3, 32, 32),
          "wrn28_10": (3, 32, 32), "fastcnn": (3, 32, 32), "fastcnn94": (3, 32, 32)}


@pytest.mark.parametrize("name", sorted(models.REGISTRY))
def test_every_model_forward_backward(name):
    shape = SHAPES.get(name, (1, 28, 28))
    net = models.build(name, shape, 10, seed=0)
    x = torch.randn(2, *shape)
    out = net(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]  # frozen: whitening, BN scales
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_seed_controls_initialisation_without_touching_global_rng():
    state = torch.random.get_rng_state()
    a = models.build("mlp", (1, 8, 8), 10, seed=1)
    b = models.build("mlp", (1, 8, 8), 10, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = models.build("mlp", (1, 8, 8), 10, seed=2)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_unknown_model():
    with pytest.raises(ValueError, match="model='vgg'"):
        models.build("vgg")


def test_mlp_shapes_match_the_sources():
    blog = models.build("mlp", (1, 28, 28), 10)  # the L2RW blog's 784-128-64-10
    sizes = [m.out_features for m in blog if isinstance(m, torch.nn.Linear)]
    assert sizes == [128, 64, 10]
    patrini = models.build("patrini_mnist", (1, 28, 28), 10)
    assert [m.out_features for m in patrini if isinstance(m, torch.nn.Linear)] == [128, 128, 10]
    assert any(isinstance(m, torch.nn.Dropout) for m in patrini)
