"""The fast CIFAR network, bf16/channels_last training, batch augmentation, flip TTA, and
every method hook under bf16 (its float32 sums stay float32)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nlutils import models, noise, train
from nlutils.methods import correction, elr, elr_plus, gradsim, reweight, robust_losses


def _images(n=64, c=3, hw=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, hw, hw, generator=g), torch.randint(0, 10, (n,), generator=g)


# ------------------------------------------------------------------ the network

@pytest.mark.parametrize("name,widths", [("fastcnn", (32, 64, 128)), ("fastcnn94", (64, 256, 256))])
def test_fastcnn_shapes_widths_and_frozen_whitening(name, widths):
    net = models.build(name, (3, 32, 32), 10, seed=0)
    assert net.widths == widths
    x, _ = _images(4)
    assert net(x).shape == (4, 10)
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert not any(n.endswith("weight") and "blocks" in n and p.ndim == 1
                   for n, p in net.named_parameters() if p.requires_grad), trainable
    # the optimiser built by the loop skips frozen parameters
    opt = train.make_optimizer("sgd", net.parameters(), 0.1, 0.9, nesterov=True)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)
    with pytest.raises(ValueError, match="widths"):
        models.build("fastcnn", (3, 32, 32), 10, widths=(32, 64))
    small = models.build("fastcnn", (3, 32, 32), 10, seed=0)
    n_params = sum(p.numel() for p in small.parameters())
    assert 0.2e6 < n_params < 0.4e6, n_params


def test_whitening_uses_images_only_and_whitens_patches():
    x, _ = _images(200, seed=1)
    x = x + 0.8 * x.roll(1, dims=3)  # neighbouring pixels correlated
    net = models.build("fastcnn", (3, 32, 32), 10, seed=0)
    models.init_whitening(net, x, eps=0.0)
    w = net.whiten.weight.detach().double()
    assert w.shape == (24, 3, 2, 2)
    assert torch.allclose(w[:12], -w[12:])
    # the first 12 filters map the patch covariance to the identity
    patches = x.double().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    cov = patches.t() @ patches / len(patches)
    W = w[:12].reshape(12, 12)
    assert torch.allclose(W @ cov @ W.t(), torch.eye(12, dtype=torch.float64), atol=1e-6)
    import inspect
    assert list(inspect.signature(models.init_whitening).parameters) == ["model", "images", "eps"]


# ------------------------------------------------------------------ the loop

def test_augmentation_shapes_content_and_seeding():
    x, _ = _images(16)
    for spec in ("flip", "crop4", "crop4+flip", "translate2+flip", "translate2"):
        aug = train.augmentation(spec)
        a = aug(x, torch.Generator().manual_seed(3))
        b = aug(x, torch.Generator().manual_seed(3))
        c = aug(x, torch.Generator().manual_seed(4))
        assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c), spec
    # a flip only mirrors: every image is itself or its mirror image
    f = train.augmentation("flip")(x, torch.Generator().manual_seed(0))
    same = (f == x).flatten(1).all(1)
    mirrored = (f == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    # reflection padding never brings in zeros; the centre pixels stay in the image
    t = train.augmentation("translate2")(x, torch.Generator().manual_seed(0))
    assert (t != 0).all()
    assert train.augmentation("none") is None and train.augmentation(None) is None
    for bad in ("crop", "flop", "crop4flip", "+flip", ""):
        with pytest.raises(ValueError, match="augment"):
            train.augmentation(bad)


def _tiny_cnn(seed=0, in_ch=1):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(in_ch, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * 4 * 4, 10))


def _fit_cnn(digits, precision="bf16", seed=0, **kw):
    net = _tiny_cnn()
    args = dict(epochs=2, batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9,
                test=(digits.x_test, digits.y_test), seed=seed, progress=False,
                precision=precision)
    args.update(kw)
    return net, train.fit(net, digits.x_train, digits.y_train, **args)


def test_bf16_channels_last_training_is_deterministic_and_learns(digits):
    a, ha = _fit_cnn(digits, augment="crop1+flip", label_smoothing=0.1, nesterov=True, tta=True)
    b, hb = _fit_cnn(digits, augment="crop1+flip", label_smoothing=0.1, nesterov=True, tta=True)
    assert ha["loss"].tolist() == hb["loss"].tolist()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a[0].weight.is_contiguous(memory_format=torch.channels_last)  # auto for conv nets
    _, hc = _fit_cnn(digits, augment="crop1+flip", label_smoothing=0.1, nesterov=True, tta=True, seed=1)
    assert ha["loss"].tolist() != hc["loss"].tolist()
    assert "test_acc_tta" in ha and ha["test_acc"].iloc[-1] > 50
    # TTA is reported beside plain accuracy and equals the mean-logit rule
    logits = (train.predict(a, digits.x_test, precision="bf16", channels_last=True)
              + train.predict(a, digits.x_test.flip(3), precision="bf16", channels_last=True)) / 2
    tta = 100 * float((logits.argmax(1) == digits.y_test).double().mean())
    assert ha["test_acc_tta"].iloc[-1] == pytest.approx(tta)
    assert ha["test_acc"].iloc[-1] == pytest.approx(train.accuracy(
        a, digits.x_test, digits.y_test, precision="bf16", channels_last=True))


def test_fp32_default_path_is_unchanged_by_the_new_options(digits):
    """precision='fp32', no smoothing, no augmentation: bitwise what the loop gave before
    (channels_last off by default for a net without convolutions)."""
    net = models.build("mlp", digits.input_shape, 10, seed=0)
    h = train.fit(net, digits.x_train, digits.y_train, epochs=1, lr=3e-3, seed=0, progress=False)
    net2 = models.build("mlp", digits.input_shape, 10, seed=0)
    opt = torch.optim.Adam(net2.parameters(), lr=3e-3, fused=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    for rows in torch.randperm(len(digits.y_train), generator=gen).split(128):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net2(digits.x_train[rows]), digits.y_train[rows]).backward()
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), net2.parameters()))
    assert h["loss"].notna().all()


def test_fit_rejects_bad_new_parameters(digits):
    for kw, name in [(dict(precision="fp16"), "precision"), (dict(label_smoothing=1.0), "label_smoothing"),
                     (dict(augment="rotate"), "augment"),
                     (dict(label_smoothing=0.1, loss_fn=robust_losses.unhinged), "label_smoothing"),
                     (dict(nesterov=True, optimizer="adam"), "nesterov")]:
        with pytest.raises(ValueError, match=name):
            _fit_cnn(digits, **kw)


# ------------------------------------------------------------------ every hook under bf16

def _batch(digits, n=64):
    return digits.x_train[:n].contiguous(memory_format=torch.channels_last), digits.y_train[:n]


def _logits(net, x, precision):
    with train.autocast(precision):
        return net(x).float()


@pytest.mark.parametrize("name,make", [
    ("forward", lambda: correction.ForwardCorrection(noise.symmetric_T(0.4, 10))),
    ("backward", lambda: correction.BackwardCorrection(noise.symmetric_T(0.4, 10))),
    ("unhinged", lambda: robust_losses.unhinged), ("sigmoid", lambda: robust_losses.sigmoid),
    ("savage", lambda: robust_losses.savage), ("bootstrap_soft", lambda: robust_losses.bootstrap_soft),
    ("bootstrap_hard", lambda: robust_losses.bootstrap_hard),
])
def test_loss_hooks_under_bf16_match_fp32(digits, name, make):
    net = _tiny_cnn().to(memory_format=torch.channels_last)
    x, y = _batch(digits)
    rows = torch.arange(len(y))
    fn = make()
    lo32, lo16 = _logits(net, x, "fp32"), _logits(net, x, "bf16")
    assert lo16.dtype == torch.float32
    a, b = fn(lo32, y, rows), fn(lo16, y, rows)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert torch.allclose(a, b, rtol=0.05, atol=0.05), (name, (a - b).abs().max())
    # and a bf16 training run with the hook is finite
    _, h = _fit_cnn(digits, loss_fn=fn, epochs=1)
    assert h["loss"].notna().all()


def test_elr_targets_under_bf16_are_float32_and_match(digits):
    net = _tiny_cnn().to(memory_format=torch.channels_last)
    x, y = _batch(digits)
    rows = torch.arange(len(y))
    out = {}
    for precision in ("fp32", "bf16"):
        loss = elr.ELRLoss(len(y), 10)
        with train.autocast(precision):
            per = loss(net(x), y, rows)  # even with logits straight from the autocast region
        assert per.dtype == torch.float32 and loss.target.dtype == torch.float32
        out[precision] = (per.detach(), loss.target.clone())
    assert torch.allclose(out["fp32"][1], out["bf16"][1], atol=2e-3)
    assert torch.allclose(out["fp32"][0], out["bf16"][0], rtol=0.05, atol=0.05)


def test_elr_plus_under_bf16(digits):
    x, y = _batch(digits)
    rows = torch.arange(len(y))
    targets, losses = {}, {}
    for precision in ("fp32", "bf16"):
        pair = elr_plus.ELRPlus(lambda: _tiny_cnn(), len(y), 10, seed=0)
        pair.to(memory_format=torch.channels_last)
        with train.autocast(precision):
            loss = pair.step_loss(pair, x, y, rows)
        loss.backward()
        assert loss.dtype == torch.float32 and pair.target.dtype == torch.float32
        targets[precision], losses[precision] = pair.target.clone(), float(loss.detach())
    assert torch.allclose(targets["fp32"], targets["bf16"], atol=2e-3)
    assert losses["fp32"] == pytest.approx(losses["bf16"], rel=0.05)
    state = torch.random.get_rng_state()
    elr_plus.ELRPlus(lambda: _tiny_cnn(), 10, 10, seed=5)
    assert torch.equal(state, torch.random.get_rng_state()), "ELRPlus must not seed the global RNG"


@pytest.mark.parametrize("inner,method", [("sgd", "jvp"), ("adam", "jvp"), ("sgd", "closed"),
                                          ("adam", "closed")])
def test_l2rw_meta_gradient_is_float32_under_bf16(digits, inner, method):
    """The weights under bf16 autocast equal the float32 weights exactly: the meta-gradient
    is computed with autocast off (closed form on an MLP, JVP on a conv net)."""
    x, y = _batch(digits)
    xv, yv = digits.x_train[100:164], digits.y_train[100:164]
    make = ((lambda: models.build("mlp", digits.input_shape, 10, seed=0)) if method == "closed"
            else (lambda: _tiny_cnn().to(memory_format=torch.channels_last)))
    weights = {}
    for precision in ("fp32", "bf16"):
        net = make()
        opt = (torch.optim.Adam(net.parameters(), lr=1e-3) if inner == "adam"
               else torch.optim.SGD(net.parameters(), lr=0.1))
        hook = reweight.MetaReweight(opt, xv, yv, inner=inner, trusted_batch=64, method=method)
        for _ in range(2):  # the second step sees optimiser state
            opt.zero_grad()
            with train.autocast(precision):
                hook.step_loss(net, x, y, torch.arange(len(y)))
            opt.step()
        weights[precision] = hook.pop_history()[1]
    assert torch.equal(weights["fp32"][:64], weights["bf16"][:64])
    assert weights["bf16"].sum() > 0


@pytest.mark.parametrize("layers", ["last", "all"])
def test_gradsim_gram_is_float32_under_bf16(digits, layers):
    net = _tiny_cnn().to(memory_format=torch.channels_last)
    x, y = _batch(digits, 32)
    G = {}
    for precision in ("fp32", "bf16"):
        with train.autocast(precision):
            G[precision], per = gradsim.gram_matrix(net, x, y, layers=layers)
        assert G[precision].dtype == torch.float32 and per.dtype == torch.float32
    C32, C16 = gradsim.cosine_from_gram(G["fp32"]), gradsim.cosine_from_gram(G["bf16"])
    assert (C32 - C16).abs().max() < 0.05
    w32 = gradsim.similarity_weights(C32)
    w16 = gradsim.similarity_weights(C16)
    assert torch.allclose(w32, w16, rtol=0.1)
    _, h = _fit_cnn(digits, step_loss=gradsim.GradSimReweight(layers=layers), epochs=1)
    assert h["loss"].notna().all()


def test_the_bf16_gram_product_would_lose_precision():
    """Why the hooks switch autocast off: the same Gram product in bf16 is visibly off."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 512, generator=g)
    exact = a.double() @ a.double().t()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = (a @ a.t()).double()
        with torch.autocast("cpu", enabled=False):
            kept = (a @ a.t()).double()
    assert (low - exact).abs().max() > 100 * (kept - exact).abs().max()


def test_freeze_stops_training_a_parameter_after_its_epochs(digits):
    net = _tiny_cnn()
    train.fit(net, digits.x_train, digits.y_train, epochs=1, batch_size=64, optimizer="sgd",
              lr=0.05, momentum=0.9, seed=0, progress=False)
    after_one = net[0].weight.detach().clone()
    net2 = _tiny_cnn()
    train.fit(net2, digits.x_train, digits.y_train, epochs=3, batch_size=64, optimizer="sgd",
              lr=0.05, momentum=0.9, seed=0, progress=False, freeze={"0.weight": 1})
    assert torch.equal(net2[0].weight.detach(), after_one) and not net2[0].weight.requires_grad
    assert net2[0].bias.requires_grad
    with pytest.raises(ValueError, match="freeze"):
        _fit_cnn(digits, freeze={"nonexistent": 1})


def test_per_step_schedule_moves_within_an_epoch(digits):
    net = models.build("mlp", digits.input_shape, 10, seed=0)
    seen = []
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def spy(model, xb, yb, rows):
        seen.append(opt.param_groups[0]["lr"])
        return F.cross_entropy(model(xb), yb)
    h = train.fit(net, digits.x_train, digits.y_train, epochs=2, batch_size=512, optimizer=lambda p: opt,
                  lr=0.1, step_loss=spy, schedule_per_step=True, progress=False,
                  lr_schedule=train.lr_schedule("triangle", 2, warmup=0.0, end=0.0))
    assert len(seen) == 6 and seen == sorted(seen, reverse=True) and len(set(seen)) == 6
    assert seen[0] == pytest.approx(0.1) and seen[-1] == pytest.approx(0.1 * (1 - 5 / 6))
    assert h["lr"].tolist() == pytest.approx([seen[0], seen[3]])
