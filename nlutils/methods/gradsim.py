r"""Gradient-similarity reweighting (Wei, *Label Noise Reduction Without Assumptions*,
Dartmouth TR2020-899).

In a mini-batch of :math:`m` examples with per-example gradients :math:`\nabla_i`,

.. math::

    w_i = \sum_{j \in \mathrm{top}_k(i)} \exp\big(a \cdot D(\nabla_i, \nabla_j)\big),
    \qquad w_i \leftarrow w_i / \textstyle\sum_l w_l ,

where :math:`D` is the cosine similarity, :math:`\mathrm{top}_k(i)` the :math:`k` largest
values of :math:`D(\nabla_i, \nabla_j)` over :math:`j \ne i`, and :math:`a` an annealing
constant (the thesis: last layer only, :math:`a = 4`, :math:`k = 4`). The update is
:math:`\sum_i w_i \nabla_i`.

The cosine matrix needs only the Gram matrix :math:`G_{ij} = \langle\nabla_i,\nabla_j\rangle`.
For a linear layer the per-example gradient is :math:`\delta_i a_i^\top` (plus
:math:`\delta_i` for the bias), so

.. math::

    G = \sum_{\text{linear layers}} (\Delta\Delta^\top) \odot (A A^\top + \mathbf{1}\mathbf{1}^\top)

(the :math:`\mathbf 1\mathbf 1^\top` term is the bias), an :math:`m\times m` matrix computed
without forming a single per-example gradient. For cross-entropy at the last layer,
:math:`\delta_i = \mathrm{softmax}(z_i) - e_{y_i}`, so the last-layer weights cost one
:math:`m\times m` product on top of the ordinary step. Layers without a rank-one form
(convolutions) get their per-example gradients from ``torch.func`` (``vmap`` of ``grad``);
they are small in the networks used here.

Example::

    hook = GradSimReweight(a=4, k=4, layers="last")
    train.fit(model, x, y, epochs=30, step_loss=hook)   # nlutils loop; or call it yourself:
    loss = hook(model, xb, yb)                           # returns Σ w_i ℓ_i; backward() it

Depends on torch only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = ["gram_linear", "cosine_from_gram", "similarity_weights", "per_example_grads",
           "gram_matrix", "GradSimReweight"]


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 (autocast output) to float32; float32 and float64 unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def gram_linear(deltas: torch.Tensor, acts: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """Gram matrix of the per-example gradients of one linear layer, ``(ΔΔᵀ) ⊙ (AAᵀ + 1)``."""
    dd = deltas @ deltas.t()
    aa = acts @ acts.t()
    return dd * (aa + 1.0) if bias else dd * aa


def cosine_from_gram(G: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    norms = G.diagonal().clamp_min(eps).sqrt()
    return G / (norms.unsqueeze(0) * norms.unsqueeze(1))


def similarity_weights(C: torch.Tensor, a: float = 4.0, k: int | None = 4,
                       same_class: torch.Tensor | None = None) -> torch.Tensor:
    """Equation (1) of the thesis with its two enhancements: ``w_i = Σ_{top-k j≠i}
    exp(a C_ij)``, normalised. ``k=None`` sums over all ``j ≠ i``. ``same_class`` (a label
    vector) restricts ``j`` to examples with the same label (the within-class variant)."""
    m = C.shape[0]
    mask = ~torch.eye(m, dtype=torch.bool, device=C.device)
    if same_class is not None:
        mask &= same_class.unsqueeze(0) == same_class.unsqueeze(1)
    scores = torch.where(mask, C, torch.full_like(C, float("-inf")))
    if k is not None and k < m - 1:
        scores = scores.topk(k, dim=1).values
    w = torch.exp(a * scores).nan_to_num(0.0).sum(1)  # exp(-inf) = 0: no valid partner
    total = w.sum()
    return w / total if total > 0 else torch.full_like(w, 1.0 / m)


def per_example_grads(model: nn.Module, x, y, names, loss_fn=F.cross_entropy) -> torch.Tensor:
    """Per-example gradients of the parameters ``names``, flattened: ``(m, Σ numel)``.
    ``torch.func``: ``vmap`` over ``grad`` of a one-example loss (no batch statistics)."""
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    rest = {n: p.detach() for n, p in model.named_parameters() if n not in names}
    buffers = {n: b for n, b in model.named_buffers()}

    def one(p, xi, yi):
        out = functional_call(model, ({**p, **rest}, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g[n].flatten(1) for n in names], dim=1)


class _Tape:
    """Forward pass recording each linear layer's input and output (hooks)."""

    def __init__(self, model, x, linears):
        self.inputs, self.outputs = [], []
        hooks = [m.register_forward_hook(self._hook) for m in linears]
        try:
            self.logits = model(x)
        finally:
            for h in hooks:
                h.remove()

    def _hook(self, module, inp, out):
        self.inputs.append(inp[0].detach().flatten(1))
        self.outputs.append(out)


def _linear_layers(model):
    """All ``nn.Linear`` layers in forward (registration) order; the last is the head."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("gradient similarity needs at least one nn.Linear layer")
    return linears


def gram_matrix(model, x, y, layers: str = "last", loss_fn=F.cross_entropy):
    """The Gram matrix of per-example gradients, over the last linear layer
    (``layers="last"``) or over all parameters (``"all"``: closed form for linear layers,
    ``torch.func`` for the rest). Returns ``(G, per_example_loss)``; under bf16 autocast
    both are float32 (the forward pass runs at the caller's precision)."""
    if layers not in ("last", "all"):
        raise ValueError(f"layers={layers!r} must be 'last' or 'all'")
    linears = _linear_layers(model)
    # the forward pass runs at the caller's precision (bf16 under autocast); the Gram
    # matrix, a sum of many small products, is formed in float32 from its activations
    tape = _Tape(model, x, linears if layers == "all" else linears[-1:])
    logits = _upcast(tape.logits)
    per = loss_fn(logits, y, reduction="none")
    with torch.autocast(x.device.type, enabled=False):
        if layers == "last":
            m = linears[-1]
            if loss_fn is F.cross_entropy:  # δ = softmax(z) - onehot(y), no backward needed
                d = logits.detach().softmax(1)
                d[torch.arange(len(y)), y] -= 1
            else:
                d = torch.autograd.grad(per.sum(), tape.outputs[-1], retain_graph=True)[0]
            return gram_linear(_upcast(d.detach()), _upcast(tape.inputs[-1]), m.bias is not None), per
        deltas = torch.autograd.grad(per.sum(), tape.outputs, retain_graph=True)
        G = sum(gram_linear(_upcast(d.detach()), _upcast(a), m.bias is not None)
                for m, a, d in zip(linears, tape.inputs, deltas))
        linear_ids = {id(p) for m in linears for p in m.parameters()}
        others = [n for n, p in model.named_parameters()
                  if id(p) not in linear_ids and p.requires_grad]
        if others:
            g = per_example_grads(model, x, y, others, loss_fn)
            G = G + g @ g.t()
    return G, per


class GradSimReweight:
    """The thesis' method as a training-step hook: returns ``Σ w_i ℓ_i`` to back-propagate.

    ``weighting``: ``"similarity"`` (equation 1), ``"drop_bottom"``/``"drop_top"`` (rank by
    the similarity weights, set the bottom/top ``fraction`` to zero and the rest uniform: the
    thesis' decoupled ranking), or ``"random"`` (weights uniform in (0, 2/m), the thesis'
    random baseline). ``within_class``: compare only examples with the same label.
    ``record``: keep every step's weights for diagnostics (:meth:`pop_history`).
    """

    def __init__(self, a: float = 4.0, k: int | None = 4, layers: str = "last",
                 weighting: str = "similarity", fraction: float = 0.2, within_class: bool = False,
                 loss_fn=F.cross_entropy, seed: int = 0, record: bool = True):
        if weighting not in ("similarity", "drop_bottom", "drop_top", "random"):
            raise ValueError(f"weighting={weighting!r} is unknown")
        if layers not in ("last", "all"):
            raise ValueError(f"layers={layers!r} must be 'last' or 'all'")
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction={fraction} must lie in [0, 1)")
        self.a, self.k, self.layers, self.weighting = a, k, layers, weighting
        self.fraction, self.within_class, self.loss_fn = fraction, within_class, loss_fn
        self.gen = torch.Generator().manual_seed(seed)
        self.record = record
        self.history: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        self.steps = 0  # training steps seen

    def weights(self, G: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = G.shape[0]
        if self.weighting == "random":
            return torch.rand(m, generator=self.gen).to(G.device) * (2.0 / m)
        w = similarity_weights(cosine_from_gram(G), self.a, self.k,
                               y if self.within_class else None)
        if self.weighting == "similarity":
            return w
        n_drop = int(round(self.fraction * m))
        order = torch.argsort(w, descending=(self.weighting == "drop_top"), stable=True)
        keep = torch.ones(m, dtype=w.dtype, device=w.device)
        keep[order[:n_drop]] = 0
        return keep / keep.sum()

    def __call__(self, model, xb, yb, rows=None):
        if self.weighting == "random":
            per = self.loss_fn(_upcast(model(xb)), yb, reduction="none")
            w = self.weights(torch.empty(len(yb), len(yb)), yb)
        else:
            G, per = gram_matrix(model, xb, yb, self.layers, self.loss_fn)
            w = self.weights(G.detach(), yb)
        if self.record and rows is not None:
            self.history.append((torch.as_tensor(rows).cpu(), w.detach().cpu(), self.steps))
        self.steps += 1
        return (w.detach() * per).sum()

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
