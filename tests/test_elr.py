import pytest
import torch
import torch.nn.functional as F

from nlutils.methods.elr import ELRLoss


def test_targets_are_running_averages_of_normalised_predictions():
    elr = ELRLoss(num_examples=5, num_classes=3, lam=3.0, beta=0.7)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    idx = torch.tensor([3, 1])
    elr(logits, torch.tensor([0, 1]), idx)
    p = logits.softmax(1).clamp(1e-4, 1 - 1e-4)
    expected = 0.3 * p / p.sum(1, keepdim=True)
    assert torch.allclose(elr.target[idx], expected)
    assert torch.all(elr.target[[0, 2, 4]] == 0)
    elr(logits, torch.tensor([0, 1]), idx)
    assert torch.allclose(elr.target[idx], 0.7 * expected + expected)


def test_loss_value_and_gradient_pull_towards_the_target():
    elr = ELRLoss(4, 3, lam=3.0, beta=0.0)  # beta 0: target = current prediction
    logits = torch.tensor([[3.0, 0.0, 0.0]], requires_grad=True)
    label = torch.tensor([1])  # a wrong label
    loss = elr(logits, label, torch.tensor([0]))
    p = logits.detach().softmax(1).clamp(1e-4, 1 - 1e-4)
    t = p / p.sum()
    manual = F.cross_entropy(logits.detach(), label) + 3.0 * torch.log(1 - (t * p).sum())
    assert torch.allclose(loss, manual.unsqueeze(0))
    loss.sum().backward()
    ce_grad = torch.autograd.grad(F.cross_entropy(logits, label), logits)[0]
    # the regulariser counteracts the push towards the wrong label on the target's class
    assert logits.grad[0, 0] < ce_grad[0, 0]


def test_zero_lambda_is_cross_entropy_and_suspects():
    elr = ELRLoss(3, 2, lam=0.0, beta=0.5)
    logits = torch.tensor([[1.0, -1.0], [-2.0, 2.0], [0.5, 0.0]])
    y = torch.tensor([0, 0, 0])
    assert torch.allclose(elr(logits, y, torch.arange(3)), F.cross_entropy(logits, y, reduction="none"))
    assert elr.suspects(y).tolist() == [False, True, False]
    with pytest.raises(ValueError):
        ELRLoss(3, 2, beta=1.0)


def _pair(n=40, lam=3.0, **kw):
    from nlutils.methods.elr_plus import ELRPlus
    make = lambda: torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    return ELRPlus(make, num_examples=n, num_classes=3, lam=lam, **kw)


def test_elr_plus_trains_both_networks_and_averages_weights():
    from nlutils import train
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    pair = _pair()
    before = [p.clone() for p in pair.parameters()]
    hist = train.fit(pair, x, y, epochs=3, batch_size=8, optimizer="sgd", lr=0.1,
                     step_loss=pair.step_loss, test=(x, y), progress=False)
    assert len(hist) == 3 and hist["loss"].notna().all()
    live = list(pair.nets.parameters())
    avg = list(pair.averaged.parameters())
    # both live networks moved; the averages moved too, but lag behind (EMA)
    assert all(not torch.equal(a, b) for a, b in zip(live, before[:len(live)]))
    assert any(not torch.equal(a, b) for a, b in zip(avg, live))
    assert all(not p.requires_grad for p in avg)
    # each network's targets were filled from the other one's averaged predictions
    assert torch.allclose(pair.target.sum(2), 1 - 0.7 ** 3 * torch.ones(2, 40), atol=1e-5)
    assert pair.suspects(y).shape == (40,)
    out = pair.eval()(x)
    assert torch.allclose(out.exp().sum(1), torch.ones(40), atol=1e-5)


def test_elr_plus_without_regulariser_and_mixup_is_cross_entropy_of_two_nets():
    pair = _pair(n=6, lam=0.0, mixup_alpha=0.0)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = pair.step_loss(pair, x, y, torch.arange(6))
    manual = sum(F.cross_entropy(net(x), y) for net in pair.nets)
    assert torch.allclose(loss, manual, atol=1e-6)
    with pytest.raises(ValueError):
        _pair(beta=1.0)
