import pytest
import torch
import torch.nn.functional as F

from nlutils.elr import ELRLoss


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
