"""SAM, ASAM and the moving average of the weights against their formulas, computed by hand
(numpy, float64) on problems small enough to write out: a linear classifier under cross-entropy,
and a net with BatchNorm for the running statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from wrn.train.step import make_ema, make_train_step

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
LR, MOMENTUM, WD = 0.1, 0.9, 5e-4


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 4, generator=g))
        model.bias.copy_(torch.randn(3, generator=g))
    return model, x, y


def _gradient(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d/d(w, b) of the mean cross-entropy of softmax(x w^T + b): (P - Y)^T x / B and mean(P - Y)."""
    z = x @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = (p - np.eye(w.shape[0])[y]) / len(y)
    return d.T @ x, d.sum(0)


def _by_hand(model: nn.Linear, x, y, steps: int, rho: float, adaptive: bool) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` SAM/ASAM steps (rho 0: plain SGD) followed by torch's SGD with Nesterov momentum and
    weight decay: d = g(w + e) + wd w; buf = d (first step) or m buf + d; w -= lr (d + m buf)."""
    w, b = (t.detach().double().numpy().copy() for t in (model.weight, model.bias))
    x, y = x.double().numpy(), y.numpy()
    bufs = None
    for _ in range(steps):
        gw, gb = _gradient(w, b, x, y)
        if rho:
            # ASAM (Kwon et al.'s code): T = |w| + 0.01 for weights, 1 for biases.
            tw, tb = (np.abs(w) + 0.01, 1.0) if adaptive else (1.0, 1.0)
            norm = np.sqrt(((tw * gw) ** 2).sum() + ((tb * gb) ** 2).sum())
            ew, eb = rho * tw ** 2 * gw / norm, rho * tb ** 2 * gb / norm  # e = rho T^2 g / ||T g||
            gw, gb = _gradient(w + ew, b + eb, x, y)
        d = [gw + WD * w, gb + WD * b]
        bufs = d if bufs is None else [MOMENTUM * m + g for m, g in zip(bufs, d)]
        w, b = (p - LR * (g + MOMENTUM * m) for p, g, m in zip((w, b), d, bufs))
    return w, b


def _by_step(model: nn.Module, x, y, steps: int, rho: float, adaptive: bool, **kwargs) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WD)
    step = make_train_step(model, opt, precision="fp32", device=CPU, sam_rho=rho, sam_adaptive=adaptive, **kwargs)
    for _ in range(steps):
        step(x, y)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_and_asam_steps_equal_the_published_update_by_hand(adaptive):
    rho = 0.5 if adaptive else 0.05
    model, x, y = _problem()
    w, b = _by_hand(model, x, y, steps=3, rho=rho, adaptive=adaptive)
    sgd_w, _ = _by_hand(model, x, y, steps=3, rho=0.0, adaptive=False)
    other_w, _ = _by_hand(model, x, y, steps=3, rho=rho, adaptive=not adaptive)
    _by_step(model, x, y, steps=3, rho=rho, adaptive=adaptive)
    got_w, got_b = model.weight.detach().double().numpy(), model.bias.detach().double().numpy()
    np.testing.assert_allclose(got_w, w, rtol=0, atol=2e-6)
    np.testing.assert_allclose(got_b, b, rtol=0, atol=2e-6)
    # Controls: plain SGD, and the other variant, land measurably elsewhere.
    assert np.abs(got_w - sgd_w).max() > 1e-4
    assert np.abs(got_w - other_w).max() > 1e-4


def test_plain_sgd_step_equals_the_hand_computed_one():
    model, x, y = _problem(1)
    w, _ = _by_hand(model, x, y, steps=2, rho=0.0, adaptive=False)
    _by_step(model, x, y, steps=2, rho=0.0, adaptive=False)
    np.testing.assert_allclose(model.weight.detach().double().numpy(), w, rtol=0, atol=2e-6)


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_sam_keeps_the_bn_statistics_of_the_first_pass_only():
    _, x, y = _problem()
    model, reference = _bn_net(), _bn_net()
    reference.train()(x)  # one forward at w: the statistics the step must leave
    _by_step(model, x, y, steps=1, rho=0.5, adaptive=False)
    bn, ref = model[1], reference[1]
    assert torch.equal(bn.running_mean, ref.running_mean) and torch.equal(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == 1
    # Control: the second pass (at w + e(w)) would have moved them again.
    twice = _bn_net()
    twice.train()(x)
    twice(x + 0.1)
    assert not torch.equal(twice[1].running_mean, ref.running_mean)


def test_sam_step_returns_the_first_pass_loss():
    model, x, y = _problem()
    expected = nn.functional.cross_entropy(model(x), y).item() * len(y)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_sum, correct = make_train_step(model, opt, precision="fp32", device=CPU, sam_rho=0.05)(x, y)
    assert loss_sum.item() == pytest.approx(expected, rel=1e-6)


def test_ema_follows_its_formula_over_parameters_and_bn_buffers():
    decay, steps = 0.8, 4
    _, x, y = _problem()
    model = _bn_net()
    ema = make_ema(model, decay)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    step = make_train_step(model, opt, precision="fp32", device=CPU, ema=ema)
    expected = None
    # The formula some codebases use instead: the average starts from the initial weights w_0.
    from_init = {k: v.double().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for i in range(steps):
        step(x + 0.1 * i, y)
        current = {k: v.double().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        # ema_1 = w_1; ema_t = d ema_{t-1} + (1 - d) w_t
        expected = current if expected is None else {k: decay * expected[k] + (1 - decay) * current[k] for k in current}
        from_init = {k: decay * from_init[k] + (1 - decay) * current[k] for k in current}
    averaged = ema.module.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name].double(), value, rtol=0, atol=1e-6, msg=name)
    assert int(ema.n_averaged) == steps
    assert int(averaged["1.num_batches_tracked"]) == steps  # a count: copied, not averaged
    # Controls: the averaged weights are not the trained ones, nor an average started at w_0.
    assert not torch.allclose(averaged["0.weight"], model.state_dict()["0.weight"], atol=1e-4)
    assert not torch.allclose(averaged["0.weight"].double(), from_init["0.weight"], atol=1e-4)
    assert not torch.allclose(averaged["1.running_var"].double(), from_init["1.running_var"], atol=1e-4)


def test_ema_off_is_none_and_the_average_keeps_device_and_memory_format():
    assert make_ema(nn.Linear(2, 2), 0.0) is None
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).to(memory_format=torch.channels_last)
    ema = make_ema(net, 0.99)
    assert ema.module[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert ema.module[0].weight is not net[0].weight


def test_sam_with_ema_and_bf16_compiled_matches_eager():
    """bf16 autocast and torch.compile keep working with SAM and EMA: the compiled step lands
    where the eager one does (within bf16 rounding)."""
    _, x, y = _problem()
    results = []
    for compiled in (False, True):
        model = _bn_net()
        ema = make_ema(model, 0.9)
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WD)
        step = make_train_step(model, opt, precision="bf16", device=CPU, compile=compiled, sam_rho=0.05,
                               sam_adaptive=True, ema=ema)
        for _ in range(3):
            step(x, y)
        results.append((model.state_dict(), ema.module.state_dict()))
    (eager, eager_ema), (compiled, compiled_ema) = results
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=2e-2, atol=2e-2, msg=name)
        torch.testing.assert_close(compiled_ema[name], eager_ema[name], rtol=2e-2, atol=2e-2, msg=name)
