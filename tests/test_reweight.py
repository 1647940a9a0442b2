"""The fast L2RW meta-gradient equals higher's second-order one (SGD and Adam)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nlutils.methods import reweight


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(),
                         nn.Linear(8, 5))


def _conv():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 3, 5))


def _setup(make, opt_name, seed, dtype=torch.float64, warm_steps=3):
    torch.manual_seed(seed)
    model = make().to(dtype)
    x = torch.randn(32, 1, 3, 4, dtype=dtype)
    y = torch.randint(0, 5, (32,))
    xv = torch.randn(16, 1, 3, 4, dtype=dtype)
    yv = torch.randint(0, 5, (16,))
    if opt_name == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(warm_steps):  # non-trivial optimiser state
        opt.zero_grad()
        F.cross_entropy(model(torch.randn_like(x)), torch.randint(0, 5, (32,))).backward()
        opt.step()
    opt.zero_grad()
    if dtype == torch.float64:
        # PyTorch keeps Adam's step counter as a float32 tensor and higher computes the bias
        # corrections β^t from it in float32 (a relative error of ~1e-5 at step 4); a float64
        # counter makes the reference exact to round-off
        for st in opt.state.values():
            if "step" in st:
                st["step"] = st["step"].double()
    return model, opt, x, y, xv, yv


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("make,method", [(_mlp, "closed"), (_mlp, "jvp"), (_conv, "jvp")])
def test_matches_higher(seed, opt_name, make, method):
    model, opt, x, y, xv, yv = _setup(make, opt_name, seed)
    ref = reweight.meta_gradient_higher(model, opt, x, y, xv, yv)
    ours = reweight.meta_gradient(model, opt, x, y, xv, yv, inner=opt_name, method=method,
                                  higher_eps=True)
    assert ref.abs().max() > 0
    assert _rel(ours, ref) <= 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gram_path_matches_higher(seed):
    """SGD virtual step on an MLP: the Gram form (noisy and trusted rows in one pass)."""
    model, opt, x, y, xv, yv = _setup(_mlp, "sgd", seed)
    ref = reweight.meta_gradient_higher(model, opt, x, y, xv, yv)
    assert _rel(reweight.meta_gradient(model, opt, x, y, xv, yv, inner="sgd", method="gram"), ref) <= 1e-9
    with pytest.raises(ValueError, match="gram"):
        reweight.meta_gradient(model, torch.optim.Adam(model.parameters()), x, y, xv, yv, inner="adam",
                               method="gram")
    with pytest.raises(ValueError, match="gram"):  # a layer that mixes rows is not row-wise
        bn = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16, affine=False), nn.Linear(16, 5))
        reweight.meta_gradient(bn, torch.optim.SGD(bn.parameters(), lr=0.1), x.float(), y, xv.float(), yv,
                               inner="sgd", method="gram")


def test_matches_higher_in_float32():
    model, opt, x, y, xv, yv = _setup(_mlp, "adam", 0, dtype=torch.float32)
    ref = reweight.meta_gradient_higher(model, opt, x, y, xv, yv)
    ours = reweight.meta_gradient(model, opt, x, y, xv, yv, inner="adam", higher_eps=True)
    assert _rel(ours, ref) <= 1e-4  # float32 round-off of a second-order pass


def test_matches_higher_on_the_first_step_with_empty_adam_state():
    model, opt, x, y, xv, yv = _setup(_mlp, "adam", 0, warm_steps=0)
    ref = reweight.meta_gradient_higher(model, opt, x, y, xv, yv)
    ours = reweight.meta_gradient(model, opt, x, y, xv, yv, inner="adam", higher_eps=True)
    assert _rel(ours, ref) <= 1e-9


def test_torch_adam_semantics_against_autograd_of_the_virtual_step():
    """Default ε placement = torch.optim.Adam's; check by differentiating that step."""
    model, opt, x, y, xv, yv = _setup(_mlp, "adam", 4)
    g = opt.param_groups[0]
    b1, b2 = g["betas"]
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    eps_w = torch.zeros(len(y), dtype=x.dtype, requires_grad=True)
    per = F.cross_entropy(model(x), y, reduction="none")
    grads = torch.autograd.grad((per * eps_w).sum(), [params[n] for n in names], create_graph=True)
    new = {}
    for n, gr in zip(names, grads):
        st = opt.state[params[n]]
        t = float(st["step"]) + 1
        m = b1 * st["exp_avg"] + (1 - b1) * gr
        v = b2 * st["exp_avg_sq"] + (1 - b2) * gr * gr
        v = torch.where(v == 0, v, v)  # v > 0 after warm steps
        new[n] = params[n] - g["lr"] / (1 - b1 ** t) * m / (torch.sqrt(v) / math.sqrt(1 - b2 ** t) + g["eps"])
    loss_v = F.cross_entropy(functional_call(model, new, (xv,)), yv)
    ref = torch.autograd.grad(loss_v, eps_w)[0]
    ours = reweight.meta_gradient(model, opt, x, y, xv, yv, inner="adam")
    assert _rel(ours, ref) <= 1e-6


def test_weights_are_clamped_and_normalised():
    w = reweight.weights_from_meta_gradient(torch.tensor([-2.0, 1.0, -1.0, 0.0]))
    assert torch.allclose(w, torch.tensor([2 / 3, 0, 1 / 3, 0]))
    assert torch.equal(reweight.weights_from_meta_gradient(torch.tensor([1.0, 2.0])), torch.zeros(2))


@pytest.mark.parametrize("make", [_mlp, _conv])
@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_step_fills_the_reweighted_gradient(make, inner):
    model, opt, x, y, xv, yv = _setup(make, "adam", 7)
    hook = reweight.MetaReweight(opt, xv, yv, inner=inner, trusted_batch=16, seed=0)
    hook.step_loss(model, x, y, rows=torch.arange(len(y)))
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    rows, w, step = hook.pop_history()
    assert torch.equal(step, torch.zeros(len(y), dtype=torch.long)) and hook.steps == 1
    assert torch.equal(rows, torch.arange(len(y))) and abs(float(w.sum()) - 1) < 1e-9
    expected_g = reweight.meta_gradient(model, opt, x, y, xv, yv, inner=inner)
    assert torch.allclose(w, reweight.weights_from_meta_gradient(expected_g).to(w.dtype), atol=1e-10)
    model.zero_grad()
    (w * F.cross_entropy(model(x), y, reduction="none")).sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-10), n


def test_bad_arguments():
    model, opt, x, y, xv, yv = _setup(_conv, "sgd", 0)
    with pytest.raises(ValueError, match="closed"):
        reweight.meta_gradient(model, opt, x, y, xv, yv, inner="sgd", method="closed")
    with pytest.raises(ValueError, match="Adam"):
        reweight.meta_gradient(model, opt, x, y, xv, yv, inner="adam")
    with pytest.raises(ValueError, match="inner"):
        reweight.MetaReweight(opt, xv, yv, inner="rmsprop")


def test_higher_hook_gives_the_same_weights_as_the_fast_one():
    model, opt, x, y, xv, yv = _setup(_mlp, "adam", 3)
    fast = reweight.MetaReweight(opt, xv, yv, inner="adam", trusted_batch=16, seed=0)
    slow = reweight.MetaReweight(opt, xv, yv, inner="adam", trusted_batch=16, seed=0, method="higher")
    fast.step_loss(model, x, y, rows=torch.arange(32))
    g_fast = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    slow.step_loss(model, x, y, rows=torch.arange(32))
    (_, w_fast, _), (_, w_slow, _) = fast.pop_history(), slow.pop_history()
    # the fast hook uses torch.optim.Adam's ε placement, higher its own: close, not equal
    assert torch.allclose(w_fast, w_slow, rtol=1e-2, atol=1e-4)
    for g, p in zip(g_fast, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-2, atol=1e-6)
