r"""Learning to Reweight Examples (Ren, Zeng, Yang & Urtasun, ICML 2018), exact and fast.

Each training step asks: if the noisy batch's loss were weighted by :math:`\epsilon`, and we
took one (virtual) optimiser step with it, how would the loss on a *trusted* clean batch
change? Starting from :math:`\epsilon = 0`,

.. math::

    \theta'(\epsilon) = \theta - \alpha \nabla_\theta \sum_i \epsilon_i \ell_i(\theta),
    \qquad
    \frac{\partial L_v(\theta'(\epsilon))}{\partial \epsilon_i}\Big|_{\epsilon=0}
      = -\alpha \,\big\langle \nabla L_v(\theta),\, \nabla \ell_i(\theta) \big\rangle ,

and the weights are :math:`w_i = \max(-\partial L_v/\partial\epsilon_i, 0)`, normalised to
sum to one (all zero if none is positive). The real step then minimises
:math:`\sum_i w_i \ell_i`.

With Adam as the inner optimiser (as the ``higher`` implementation does it), the
virtual gradient :math:`g(\epsilon)=\sum_i \epsilon_i \nabla\ell_i` enters Adam's moments
:math:`m' = \beta_1 m + (1-\beta_1) g`, :math:`v' = \beta_2 v + (1-\beta_2) g^2`. At
:math:`\epsilon = 0` the step is not zero: the momentum still moves the weights to the
*look-ahead point* :math:`\bar\theta = \theta - \frac{\eta}{b_1}\,\beta_1 m / d` with
:math:`d = \sqrt{\beta_2 v / b_2} + \varepsilon` (:math:`b_k = 1-\beta_k^{t+1}`). Because
:math:`g(0)=0`, the derivative through :math:`v'` vanishes and

.. math::

    \frac{\partial L_v}{\partial \epsilon_i}
      = -\frac{\eta (1-\beta_1)}{b_1}\,
        \Big\langle \frac{\nabla L_v(\bar\theta)}{d},\, \nabla \ell_i(\theta) \Big\rangle .

Both cases are an inner product :math:`\langle u, \nabla\ell_i\rangle` with one fixed vector
:math:`u`. For a linear layer the per-example gradient is rank one,
:math:`\nabla_W \ell_i = \delta_i a_i^\top` (:math:`\delta_i` the gradient at the layer's
output, :math:`a_i` its input), so :math:`\langle U, \delta_i a_i^\top\rangle =
\delta_i^\top U a_i`: a batch of them costs one matrix product and no per-example gradient
is ever formed. The same :math:`\delta_i, a_i` give the real update
:math:`\sum_i w_i \delta_i a_i^\top` without a second backward pass. The extra cost of the
method is one forward/backward pass on the trusted batch. For networks with other
parameterised layers the inner products come from one forward-mode pass
(``torch.func.jvp`` of the per-example losses in direction :math:`u`), which is exact too.

Example::

    opt = torch.optim.Adam(model.parameters(), lr=6e-4)
    l2rw = MetaReweight(opt, x_trusted, y_trusted, inner="adam")
    for xb, yb in batches:
        opt.zero_grad()
        l2rw.step_loss(model, xb, yb)     # fills .grad with the reweighted gradient
        opt.step()

Depends on torch only (``higher`` only for :func:`meta_gradient_higher`, the reference).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

__all__ = ["MetaReweight", "meta_gradient", "meta_gradient_higher", "weights_from_meta_gradient",
           "lookahead"]


def weights_from_meta_gradient(grad_eps: torch.Tensor) -> torch.Tensor:
    """``w = max(-grad, 0) / Σ max(-grad, 0)`` (all zeros when no entry is positive)."""
    w = torch.clamp(-grad_eps, min=0)
    total = w.sum()
    return w / total if total > 0 else w


def lookahead(model: nn.Module, optimizer: torch.optim.Optimizer | None, inner: str,
              inner_lr: float | None = None, higher_eps: bool = False):
    r"""The point :math:`\bar\theta` where the trusted gradient is taken, the elementwise
    preconditioner :math:`1/d` (``None`` for SGD) and the scalar in front of the inner
    product. ``inner`` is ``"sgd"`` (plain SGD, Ren et al.) or ``"adam"`` (the state of
    ``optimizer``, which must be a ``torch.optim.Adam``). ``higher_eps=True`` puts Adam's
    ε where ``higher``'s differentiable Adam puts it (before the bias correction)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    if inner == "sgd":
        lr = inner_lr if inner_lr is not None else (
            optimizer.param_groups[0]["lr"] if optimizer is not None else 1.0)
        return {n: params[n].detach() for n in names}, None, lr
    if inner != "adam":
        raise ValueError(f"inner={inner!r} must be 'sgd' or 'adam'")
    if not isinstance(optimizer, torch.optim.Adam):
        raise ValueError("inner='adam' needs the model's torch.optim.Adam optimiser")
    group = optimizer.param_groups[0]
    if group.get("weight_decay", 0) or group.get("amsgrad", False) or len(optimizer.param_groups) > 1:
        raise ValueError("the exact Adam meta-gradient here assumes one parameter group, "
                         "no weight decay and no amsgrad")
    beta1, beta2 = group["betas"]
    lr, eps = group["lr"], group["eps"]
    theta_bar, precond = {}, {}
    scale = None
    for n in names:
        p = params[n]
        st = optimizer.state.get(p, {})
        t = float(st["step"]) if "step" in st else 0.0
        b1, b2 = 1 - beta1 ** (t + 1), 1 - beta2 ** (t + 1)
        m = st.get("exp_avg", torch.zeros_like(p)).detach()
        v = st.get("exp_avg_sq", torch.zeros_like(p)).detach()
        if higher_eps:
            d = (torch.sqrt(beta2 * v) + eps) / math.sqrt(b2)
        else:
            d = torch.sqrt(beta2 * v) / math.sqrt(b2) + eps
        theta_bar[n] = p.detach() - (lr / b1) * beta1 * m / d
        precond[n] = 1.0 / d
        scale = lr * (1 - beta1) / b1  # the same for every parameter (one shared step count)
    return theta_bar, precond, scale


def _trusted_gradient(model, theta, x_v, y_v, loss_fn):
    """∇ of the mean trusted loss at parameters ``theta`` (a dict), without touching the
    model's own parameters or buffers."""
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    theta = {n: t.detach().requires_grad_(True) for n, t in theta.items()}
    loss = loss_fn(functional_call(model, (theta, buffers), (x_v,)), y_v, reduction="mean")
    grads = torch.autograd.grad(loss, list(theta.values()))
    return dict(zip(theta, grads)), loss.detach()


def _linear_only(model: nn.Module) -> list[nn.Linear] | None:
    """The model's linear layers if every trainable parameter belongs to one, else None."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    owned = {id(p) for m in linears for p in m.parameters()}
    if all(id(p) in owned for p in model.parameters() if p.requires_grad):
        return linears
    return None


class _LinearTape:
    """One forward pass that records every linear layer's input ``a`` and output ``z``;
    ``deltas`` then gives ``∂ℓ_i/∂z_i`` for all examples with one backward to the outputs."""

    def __init__(self, model, linears, x):
        self.inputs, self.outputs = [], []
        hooks = [m.register_forward_hook(self._hook) for m in linears]
        try:
            self.logits = model(x)
        finally:
            for h in hooks:
                h.remove()
        self.linears = linears

    def _hook(self, module, inp, out):
        if inp[0].ndim != 2:
            raise ValueError("closed form needs 2-D inputs to every nn.Linear")
        self.inputs.append(inp[0].detach())
        self.outputs.append(out)

    def deltas(self, per_example_loss):
        return [d.detach() for d in torch.autograd.grad(per_example_loss.sum(), self.outputs)]


def _dots_closed_form(linears, tape, deltas, u_by_param):
    """⟨u, ∇ℓ_i⟩ for all i: Σ_layers δ_iᵀ U a_i + δ_iᵀ u_b (no per-example gradient)."""
    s = 0
    for m, a, d in zip(linears, tape.inputs, deltas):
        s = s + ((d @ u_by_param[id(m.weight)]) * a).sum(1)
        if m.bias is not None:
            s = s + d @ u_by_param[id(m.bias)]
    return s


def _dots_jvp(model, x, y, u, loss_fn):
    """⟨u, ∇ℓ_i⟩ for all i as one Jacobian-vector product of the per-example losses."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def losses(p):
        return loss_fn(functional_call(model, (p, buffers), (x,)), y, reduction="none")

    _, dots = jvp(losses, (params,), ({n: u[n] for n in params},))
    return dots


def meta_gradient(model, optimizer, x, y, x_v, y_v, inner="adam", loss_fn=F.cross_entropy,
                  method="auto", inner_lr=None, higher_eps=False):
    r""":math:`\partial L_v(\theta'(\epsilon))/\partial\epsilon` at :math:`\epsilon=0`
    for the batch ``(x, y)`` and trusted batch ``(x_v, y_v)``: a tensor of shape ``(B,)``.
    ``method``: ``"closed"`` (linear layers only), ``"jvp"`` (any network) or ``"auto"``."""
    theta_bar, precond, scale = lookahead(model, optimizer, inner, inner_lr, higher_eps)
    g_v, _ = _trusted_gradient(model, theta_bar, x_v, y_v, loss_fn)
    u = {n: g * precond[n] if precond is not None else g for n, g in g_v.items()}
    linears = _linear_only(model) if method in ("auto", "closed") else None
    if method == "closed" and linears is None:
        raise ValueError("method='closed' needs a network whose parameters are all in nn.Linear")
    if linears is not None:
        tape = _LinearTape(model, linears, x)
        per = loss_fn(tape.logits, y, reduction="none")
        by_id = {id(p): u[n] for n, p in model.named_parameters() if n in u}
        dots = _dots_closed_form(linears, tape, tape.deltas(per), by_id)
    else:
        dots = _dots_jvp(model, x, y, u, loss_fn)
    return -scale * dots.detach()


def meta_gradient_higher(model, optimizer, x, y, x_v, y_v, loss_fn=F.cross_entropy):
    """The reference: the meta-gradient as the blog computes it with ``higher`` (a
    differentiable copy of ``optimizer`` takes the ε-weighted step, then autograd)."""
    import higher

    with higher.innerloop_ctx(model, optimizer, copy_initial_weights=True) as (fmodel, diffopt):
        per = loss_fn(fmodel(x), y, reduction="none")
        eps = torch.zeros_like(per, requires_grad=True)
        diffopt.step(torch.sum(per * eps))
        loss_v = loss_fn(fmodel(x_v), y_v)
        return torch.autograd.grad(loss_v, eps)[0].detach()


class MetaReweight:
    """L2RW as a training-step hook: weights for the batch from a trusted batch, then the
    reweighted gradient written into ``.grad`` (call ``optimizer.step()`` afterwards).

    ``inner``: ``"adam"`` (the blog's virtual step through Adam's state) or ``"sgd"``
    (Ren et al.'s plain SGD step). ``method``: ``"auto"`` (closed form for all-linear
    networks, else a JVP), ``"closed"``, ``"jvp"``, or ``"higher"`` (the blog's
    second-order pass, for comparison). ``trusted_batch`` examples are drawn per step from a
    shuffled cycle over the trusted set. ``history`` keeps the weights of every step
    (``(rows, w)`` pairs, on the CPU) until :meth:`pop_history` is called.
    """

    def __init__(self, optimizer, x_trusted, y_trusted, inner="adam", trusted_batch=128,
                 loss_fn=F.cross_entropy, seed=0, method="auto", keep_history=True):
        if inner not in ("adam", "sgd"):
            raise ValueError(f"inner={inner!r} must be 'sgd' or 'adam'")
        if len(y_trusted) == 0:
            raise ValueError("the trusted set is empty")
        self.optimizer, self.inner, self.loss_fn, self.method = optimizer, inner, loss_fn, method
        self.x_v, self.y_v = x_trusted, y_trusted
        self.trusted_batch = min(trusted_batch, len(y_trusted))
        self.gen = torch.Generator().manual_seed(seed)
        self._order, self._pos = torch.randperm(len(y_trusted), generator=self.gen), 0
        self.keep_history = keep_history
        self.history: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _next_trusted(self, device):
        if self._pos + self.trusted_batch > len(self._order):
            self._order, self._pos = torch.randperm(len(self.y_v), generator=self.gen), 0
        idx = self._order[self._pos:self._pos + self.trusted_batch]
        self._pos += self.trusted_batch
        return self.x_v.index_select(0, idx).to(device), self.y_v.index_select(0, idx).to(device)

    def step_loss(self, model, xb, yb, rows=None):
        """Compute the weights and fill ``.grad``; returns the weighted loss (detached)."""
        x_v, y_v = self._next_trusted(xb.device)
        if self.method == "higher":  # the source's way: a second-order pass through higher
            if self.inner == "sgd":
                raise ValueError("method='higher' differentiates the real optimiser (Adam); "
                                 "use method='auto' for the SGD inner step")
            w = weights_from_meta_gradient(
                meta_gradient_higher(model, self.optimizer, xb, yb, x_v, y_v, self.loss_fn))
            loss = (w * self.loss_fn(model(xb), yb, reduction="none")).sum()
            loss.backward()
            if self.keep_history and rows is not None:
                self.history.append((torch.as_tensor(rows).cpu(), w.detach().cpu()))
            return loss.detach()
        theta_bar, precond, scale = lookahead(model, self.optimizer, self.inner)
        g_v, _ = _trusted_gradient(model, theta_bar, x_v, y_v, self.loss_fn)
        u = {n: g * precond[n] if precond is not None else g for n, g in g_v.items()}
        linears = _linear_only(model) if self.method in ("auto", "closed") else None
        if linears is not None:
            # one forward and one backward (to the layer outputs) serve both the weights
            # and the update Σ w_i δ_i a_iᵀ
            tape = _LinearTape(model, linears, xb)
            per = self.loss_fn(tape.logits, yb, reduction="none")
            deltas = tape.deltas(per)
            by_id = {id(p): u[n] for n, p in model.named_parameters() if n in u}
            w = weights_from_meta_gradient(-scale * _dots_closed_form(linears, tape, deltas, by_id))
            for m, a, d in zip(linears, tape.inputs, deltas):
                wd = d * w.unsqueeze(1)
                m.weight.grad = wd.t() @ a
                if m.bias is not None:
                    m.bias.grad = wd.sum(0)
            loss = (w * per.detach()).sum()
        else:
            w = weights_from_meta_gradient(-scale * _dots_jvp(model, xb, yb, u, self.loss_fn))
            per = self.loss_fn(model(xb), yb, reduction="none")
            loss = (w * per).sum()
            loss.backward()
            loss = loss.detach()
        if self.keep_history and rows is not None:
            self.history.append((torch.as_tensor(rows).cpu(), w.detach().cpu()))
        return loss

    __call__ = step_loss

    def pop_history(self):
        """All ``(rows, weights)`` recorded since the last call, concatenated."""
        if not self.history:
            return torch.empty(0, dtype=torch.long), torch.empty(0)
        rows = torch.cat([r for r, _ in self.history])
        w = torch.cat([w for _, w in self.history])
        self.history = []
        return rows, w
