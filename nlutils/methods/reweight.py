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
method is one forward/backward pass on the trusted batch. With the plain SGD virtual step
(:math:`u = \nabla L_v`, itself a sum of rank-one terms :math:`\sum_j \delta_{vj} a_{vj}^\top`)
on an MLP it is less: :math:`\delta_i^\top U a_i = \sum_j (\delta_i^\top \delta_{vj})
(a_i^\top a_{vj})`, two small Gram matrices from one forward/backward of the noisy and
trusted rows together, and the trusted gradient is never formed. Adam's elementwise
preconditioner :math:`1/d` breaks that factorisation. For networks with other
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

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

__all__ = ["MetaReweight", "meta_gradient", "meta_gradient_higher", "weights_from_meta_gradient",
           "lookahead"]


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 (autocast output) to float32; float32 and float64 unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def weights_from_meta_gradient(grad_eps: torch.Tensor) -> torch.Tensor:
    """``w = max(-grad, 0) / Σ max(-grad, 0)`` (all zeros when no entry is positive)."""
    w = torch.clamp(-grad_eps, min=0)
    total = w.sum()
    return w / total if total > 0 else w


def lookahead(model: nn.Module, optimizer: torch.optim.Optimizer | None, inner: str,
              inner_lr: float | None = None, higher_eps: bool = False):
    r"""The point :math:`\bar\theta` where the trusted gradient is taken, Adam's
    denominators :math:`d` (the preconditioner is :math:`1/d`; ``None`` for SGD) and the
    scalar in front of the inner product; lists follow ``model.parameters()`` (trainable
    ones). ``inner`` is ``"sgd"`` (plain SGD, Ren et al.) or ``"adam"`` (the state of
    ``optimizer``, which must be a ``torch.optim.Adam``). ``higher_eps=True`` puts Adam's ε where ``higher``'s
    differentiable Adam puts it (before the bias correction)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if inner == "sgd":
        lr = inner_lr if inner_lr is not None else (
            optimizer.param_groups[0]["lr"] if optimizer is not None else 1.0)
        return [p.detach() for p in params], None, lr
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
    states = [optimizer.state.get(p, {}) for p in params]
    if not all("exp_avg" in st for st in states):  # before the first real step
        zeros = [torch.zeros_like(p) for p in params]
        return _adam_terms(params, zeros, zeros, 0.0, beta1, beta2, lr, eps, higher_eps)
    t = float(states[0]["step"])  # one shared step count
    m = [st["exp_avg"] for st in states]
    v = [st["exp_avg_sq"] for st in states]
    return _adam_terms(params, m, v, t, beta1, beta2, lr, eps, higher_eps)


def _adam_terms(params, m, v, t, beta1, beta2, lr, eps, higher_eps):
    """Look-ahead point, denominators d and scale; batched over parameters (foreach ops)."""
    b1, b2 = 1 - beta1 ** (t + 1), 1 - beta2 ** (t + 1)
    d = torch._foreach_mul(v, beta2 if higher_eps else beta2 / b2)  # one new list, then in place
    torch._foreach_sqrt_(d)
    torch._foreach_add_(d, eps)
    if higher_eps:  # d = (sqrt(β2 v) + ε) / sqrt(b2)
        torch._foreach_div_(d, math.sqrt(b2))
    # else           d = sqrt(β2 v / b2) + ε
    theta_bar = torch._foreach_addcdiv([p.detach() for p in params], m, d, value=-(lr / b1) * beta1)
    return theta_bar, d, lr * (1 - beta1) / b1


def _trusted_gradient(model, theta, x_v, y_v, loss_fn, cache=None):
    """∇ of the mean trusted loss at parameters ``theta`` (a list in ``parameters()``
    order), leaving the model's own parameters and buffers untouched. A linear-only
    ``nn.Sequential`` is walked directly; other networks go through ``functional_call``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(model, nn.Sequential) and _linear_only(model, cache) is not None:
        # walk the layers with the look-ahead weights in place of the linear layers' own
        theta = [t.detach().requires_grad_(True) for t in theta]
        at = {id(p): t for p, t in zip(params, theta)}
        h = x_v
        for layer in model:
            if isinstance(layer, nn.Linear):
                h = F.linear(h, at[id(layer.weight)],
                             None if layer.bias is None else at[id(layer.bias)])
            else:
                h = layer(h)
        loss = loss_fn(h, y_v, reduction="mean")
        return list(torch.autograd.grad(loss, theta)), loss.detach()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    theta = {n: t.detach().requires_grad_(True) for n, t in zip(names, theta)}
    loss = loss_fn(functional_call(model, (theta, buffers), (x_v,)), y_v, reduction="mean")
    grads = torch.autograd.grad(loss, list(theta.values()))
    return list(grads), loss.detach()


def _linear_only(model: nn.Module, cache: dict | None = None) -> list[nn.Linear] | None:
    """The model's linear layers if every trainable parameter belongs to one, else None.
    ``cache`` (a dict the caller owns, e.g. a :class:`MetaReweight`'s) remembers the answer
    per set of parameters; nothing is stored on the user's model."""
    key = tuple(id(p) for p in model.parameters())
    if cache is not None and key in cache:
        return cache[key]
    linears = _find_linear_only(model)
    if cache is not None:
        cache[key] = linears
    return linears


def _find_linear_only(model):
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    owned = {id(p) for m in linears for p in m.parameters()}
    if all(id(p) in owned for p in model.parameters() if p.requires_grad):
        return linears
    return None


class _LinearTape:
    """One forward pass that records every linear layer's input ``a`` and output ``z``;
    ``deltas`` then gives ``∂ℓ_i/∂z_i`` for all examples with one backward to the outputs.
    An ``nn.Sequential`` is walked layer by layer; other models are traced with hooks."""

    def __init__(self, model, linears, x):
        self.inputs, self.outputs, self.linears = [], [], linears
        if isinstance(model, nn.Sequential):
            h = x
            for layer in model:
                if isinstance(layer, nn.Linear):
                    self._record(h)
                    h = layer(h)
                    self.outputs.append(h)
                else:
                    h = layer(h)
            self.logits = h
            return
        hooks = [m.register_forward_hook(self._hook) for m in linears]
        try:
            self.logits = model(x)
        finally:
            for h in hooks:
                h.remove()

    def _record(self, a):
        if a.ndim != 2:
            raise ValueError("closed form needs 2-D inputs to every nn.Linear")
        self.inputs.append(a.detach())

    def _hook(self, module, inp, out):
        self._record(inp[0])
        self.outputs.append(out)

    def deltas(self, per_example_loss):
        return [d.detach() for d in torch.autograd.grad(per_example_loss.sum(), self.outputs)]


_ROWWISE = (nn.Linear, nn.Flatten, nn.Identity, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU,
            nn.Tanh, nn.Sigmoid, nn.Softplus)


def _rowwise_mlp(model) -> bool:
    """An ``nn.Sequential`` whose every layer acts on each row alone (linear layers and
    element-wise activations): stacking two batches into one changes no row's output."""
    return isinstance(model, nn.Sequential) and all(
        isinstance(m, _ROWWISE) and (not isinstance(m, nn.Flatten) or m.start_dim == 1) for m in model)


def _use_gram(model, inner, method, cache=None) -> bool:
    """Whether the Gram path applies (``method='gram'`` where it cannot is an error)."""
    ok = inner == "sgd" and _rowwise_mlp(model) and _linear_only(model, cache) is not None
    if method == "gram" and not ok:
        raise ValueError("method='gram' needs inner='sgd' and an nn.Sequential of linear layers "
                         "and element-wise activations")
    return ok and method in ("auto", "gram")


def _dots_gram(linears, model, x, y, x_v, y_v, loss_fn):
    r"""SGD virtual step on a row-wise MLP: :math:`\langle\nabla L_v, \nabla\ell_i\rangle =
    \sum_l \sum_j (\delta_i^\top\delta_{vj})(a_i^\top a_{vj} + [\text{bias}])`, since
    :math:`\nabla_W L_v = \sum_j \delta_{vj} a_{vj}^\top` (with :math:`\delta_{vj}` scaled by
    :math:`1/B_v`). Noisy and trusted rows share one forward and one backward to the layer
    outputs, and the trusted gradient is never formed: a Gram matrix :math:`A A_v^\top`
    replaces both it and the product :math:`A U^\top`. Returns the dots and the tape of the
    noisy rows (inputs, deltas, per-example losses) for the weighted update."""
    b = len(y)
    tape = _LinearTape(model, linears, torch.cat([x, x_v.to(x.dtype)]))
    per = loss_fn(tape.logits, torch.cat([y, y_v]), reduction="none")
    deltas = [d.detach() for d in torch.autograd.grad(per[:b].sum() + per[b:].mean(), tape.outputs)]
    dots = 0
    for m, a, d in zip(linears, tape.inputs, deltas):
        k = a[:b] @ a[b:].t()  # B x B_v: a_i . a_vj
        if m.bias is not None:
            k += 1
        dots = dots + ((d[:b] @ d[b:].t()) * k).sum(1)
    return dots, ([a[:b] for a in tape.inputs], [d[:b] for d in deltas], per[:b])


def _dots_closed_form(linears, tape, deltas, u_by_param):
    """⟨u, ∇ℓ_i⟩ for all i: Σ_layers δ_iᵀ U a_i + δ_iᵀ u_b (no per-example gradient)."""
    s = 0
    for m, a, d in zip(linears, tape.inputs, deltas):
        # (A Uᵀ) is B x out: cheaper to finish than (Δ U), B x in, when in > out
        s = s + ((a @ u_by_param[id(m.weight)].t()) * d).sum(1)
        if m.bias is not None:
            s = s + d @ u_by_param[id(m.bias)]
    return s


@contextlib.contextmanager
def _batch_statistics_only(model):
    """BatchNorm layers normalise by the batch's statistics and update no running
    statistics (what a training-mode forward computes, without its in-place side effect,
    which ``torch.func`` transforms refuse)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.training and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def _dots_jvp(model, x, y, u, loss_fn):
    """⟨u, ∇ℓ_i⟩ for all i as one Jacobian-vector product of the per-example losses."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def losses(p):
        return loss_fn(functional_call(model, (p, buffers), (x,)), y, reduction="none")

    with _batch_statistics_only(model):
        _, dots = jvp(losses, (params,), (dict(zip(names, u)),))
    return dots


def _inner_products(model, x, y, u, loss_fn, method, cache=None):
    """``(⟨u, ∇ℓ_i⟩)_i`` plus, on the closed-form path, the tape and deltas that also give
    the weighted update. ``u`` is a list in ``parameters()`` order."""
    linears = _linear_only(model, cache) if method in ("auto", "closed") else None
    if method == "closed" and linears is None:
        raise ValueError("method='closed' needs a network whose parameters are all in nn.Linear")
    if linears is not None:
        tape = _LinearTape(model, linears, x)
        per = loss_fn(tape.logits, y, reduction="none")
        deltas = tape.deltas(per)
        by_id = {id(p): ui for p, ui in zip(
            [p for p in model.parameters() if p.requires_grad], u)}
        return _dots_closed_form(linears, tape, deltas, by_id), (linears, tape, deltas, per)
    return _dots_jvp(model, x, y, u, loss_fn), None


def meta_gradient(model, optimizer, x, y, x_v, y_v, inner="adam", loss_fn=F.cross_entropy,
                  method="auto", inner_lr=None, higher_eps=False):
    r""":math:`\partial L_v(\theta'(\epsilon))/\partial\epsilon` at :math:`\epsilon=0`
    for the batch ``(x, y)`` and trusted batch ``(x_v, y_v)``: a tensor of shape ``(B,)``.
    ``method``: ``"closed"`` (linear layers only), ``"gram"`` (SGD virtual step on an MLP of
    row-wise layers), ``"jvp"`` (any network) or ``"auto"`` (gram, else closed, else jvp)."""
    theta_bar, denom, scale = lookahead(model, optimizer, inner, inner_lr, higher_eps)
    if _use_gram(model, inner, method):
        dots, _ = _dots_gram(_linear_only(model), model, x, y, x_v, y_v, loss_fn)
        return -scale * dots.detach()
    g_v, _ = _trusted_gradient(model, theta_bar, x_v, y_v, loss_fn)
    u = g_v if denom is None else torch._foreach_div(g_v, denom)
    dots, _ = _inner_products(model, x, y, u, loss_fn, method)
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
    (Ren et al.'s plain SGD step). ``method``: ``"auto"`` (Gram matrices for the SGD step on
    an MLP, the closed form for other all-linear networks, else a JVP), ``"gram"``,
    ``"closed"``, ``"jvp"``, or ``"higher"`` (the blog's
    second-order pass, for comparison). Under ``torch.autocast`` (bf16 training) the
    meta-gradient is still computed in float32; only the weighted step runs in bf16.
    ``higher_eps``: take Adam's virtual step exactly as
    ``higher`` does (ε before the bias correction) instead of as ``torch.optim.Adam``. ``trusted_batch`` examples are drawn per step from a
    shuffled cycle over the trusted set. ``history`` keeps the weights of every step
    (on the CPU) until :meth:`pop_history` is called.
    """

    def __init__(self, optimizer, x_trusted, y_trusted, inner="adam", trusted_batch=128,
                 loss_fn=F.cross_entropy, seed=0, method="auto", keep_history=True,
                 higher_eps=False):
        if inner not in ("adam", "sgd"):
            raise ValueError(f"inner={inner!r} must be 'sgd' or 'adam'")
        if len(y_trusted) == 0:
            raise ValueError("the trusted set is empty")
        self.optimizer, self.inner, self.loss_fn, self.method = optimizer, inner, loss_fn, method
        self.x_v, self.y_v = x_trusted, y_trusted
        self.trusted_batch = min(trusted_batch, len(y_trusted))
        self.gen = torch.Generator().manual_seed(seed)
        self._order, self._pos = torch.randperm(len(y_trusted), generator=self.gen), 0
        self._cycle = None
        self.keep_history, self.higher_eps = keep_history, higher_eps
        self._linears: dict = {}  # parameter ids -> the model's linear layers (or None)
        self.history: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        self.steps = 0  # training steps seen

    def _next_trusted(self, device):
        """The next trusted batch of a shuffled cycle (the set is small: it is permuted
        once per cycle and sliced)."""
        if self._pos + self.trusted_batch > len(self._order) or self._cycle is None:
            if self._cycle is not None:
                self._order = torch.randperm(len(self.y_v), generator=self.gen)
            self._pos = 0
            self._cycle = (self.x_v.index_select(0, self._order).to(device),
                           self.y_v.index_select(0, self._order).to(device))
        i = self._pos
        self._pos += self.trusted_batch
        return self._cycle[0][i:i + self.trusted_batch], self._cycle[1][i:i + self.trusted_batch]

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
                self.history.append((torch.as_tensor(rows).cpu(), w.detach().cpu(), self.steps))
            self.steps += 1
            return loss.detach()
        # the meta-gradient is a sum of many small products: float32 even when the caller
        # trains under bf16 autocast (the real weighted step below keeps the caller's precision)
        with torch.autocast(xb.device.type, enabled=False):
            theta_bar, denom, scale = lookahead(model, self.optimizer, self.inner,
                                               higher_eps=self.higher_eps)
            if _use_gram(model, self.inner, self.method, self._linears):
                linears = _linear_only(model, self._linears)
                dots, (inputs, deltas, per) = _dots_gram(linears, model, xb, yb, x_v, y_v, self.loss_fn)
                tape = (linears, inputs, deltas, per)
            else:
                g_v, _ = _trusted_gradient(model, theta_bar, x_v, y_v, self.loss_fn, self._linears)
                if denom is not None:  # u = ∇L_v(θ̄) / d, in place (g_v is a fresh list)
                    torch._foreach_div_(g_v, denom)
                dots, tape = _inner_products(model, xb, yb, g_v, self.loss_fn, self.method, self._linears)
                if tape is not None:
                    tape = (tape[0], tape[1].inputs, tape[2], tape[3])
            w = weights_from_meta_gradient(-scale * dots.detach())
            if tape is not None:
                # the forward and the backward to the layer outputs that gave the weights
                # also give the update Σ_i w_i δ_i a_iᵀ: no second backward pass (float32)
                linears, inputs, deltas, per = tape
                for m, a, d in zip(linears, inputs, deltas):
                    wd = d * w.unsqueeze(1)
                    m.weight.grad = wd.t() @ a
                    if m.bias is not None:
                        m.bias.grad = wd.sum(0)
                loss = (w * per.detach()).sum()
        if tape is None:
            per = self.loss_fn(_upcast(model(xb)), yb, reduction="none")
            loss = (w * per).sum()
            loss.backward()
            loss = loss.detach()
        if self.keep_history and rows is not None:
            self.history.append((torch.as_tensor(rows).cpu(), w.detach().cpu(), self.steps))
        self.steps += 1
        return loss

    __call__ = step_loss

    def pop_history(self):
        """Everything recorded since the last call as three 1-D tensors ``(rows, weights,
        step)``: the row of each weighted example, its weight, and the number of the
        training step that gave it (one shape for every reweighting hook of the book)."""
        if not self.history:
            return torch.empty(0, dtype=torch.long), torch.empty(0), torch.empty(0, dtype=torch.long)
        rows = torch.cat([r for r, _, _ in self.history])
        w = torch.cat([w for _, w, _ in self.history])
        step = torch.cat([torch.full((len(r),), s, dtype=torch.long) for r, _, s in self.history])
        self.history = []
        return rows, w, step
