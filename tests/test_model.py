"""The model: the seed's parameters, the paper's equations, and where each loss sends gradients."""
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from model import (GlimpseLoop, ModelConfig, RecurrentAttention, Rollout, glimpse_loop,
                   loss_terms)
from modules import LocationNetwork, LSTMCore

SEED_KEYS = [f"{m}.{p}" for m in ("sensor.fc1", "sensor.fc2", "sensor.fc3", "sensor.fc4",
                                  "rnn.i2h", "rnn.h2h", "locator.fc", "classifier.fc",
                                  "baseliner.fc") for p in ("weight", "bias")]


def test_seed_parameter_count_and_names():
    model = RecurrentAttention()
    assert sum(p.numel() for p in model.parameters()) == 209_677
    assert list(model.state_dict()) == SEED_KEYS
    # the defaults are the seed's published run, with the written-out backward
    assert model.config == ModelConfig(patch_size=8, num_patches=1, glimpse_scale=2,
                                       channels=1, glimpse_hidden=128, loc_hidden=128,
                                       hidden_size=256, num_classes=10, num_glimpses=6,
                                       core="rnn", std=0.17, random_glimpses=False,
                                       autograd=False, model="ram", height=28, width=28)
    retina = model.sensor.retina
    assert (retina.g, retina.k, retina.s, model.std, model.locator.std) == (8, 1, 2, 0.17, 0.17)
    assert model.hidden_size == 256 and not model.autograd


def test_model_config_from_flags_and_checkpoints():
    """ModelConfig.of takes the fields it knows from a config's or a checkpoint's settings (the
    others ignored, the missing ones at their defaults, as in checkpoints from before a flag
    existed), then what is given, which wins; network() is what must match to load."""
    settings = {"patch_size": 12, "num_patches": 3, "std": 0.1, "channels": 1, "epochs": 5}
    c = ModelConfig.of(settings, channels=3, num_classes=4)
    assert c == ModelConfig(patch_size=12, num_patches=3, std=0.1, channels=3, num_classes=4)
    assert c.network() == {"patch_size": 12, "num_patches": 3, "glimpse_scale": 2,
                           "glimpse_hidden": 128, "loc_hidden": 128, "hidden_size": 256,
                           "num_glimpses": 6, "core": "rnn", "random_glimpses": False,
                           "full_screen": False, "model": "ram"}
    # a baseline is only what it uses: RAM's flags do not tell two convnets apart
    assert ModelConfig.of(settings, model="convnet").network() == {"model": "convnet"}
    assert ModelConfig(model="fc", hidden_size=64).network() == {"model": "fc", "hidden_size": 64}


def plain_rollout(model, x, l_0, T, eps):
    """The paper's equations, one glimpse after another, in one autograd graph: the Rollout
    and h_1..h_T (B, T, hidden)."""
    s, r, std = model.sensor, model.rnn, model.std
    h, l, hs, log_pi, b, locs = x.new_zeros(len(x), 256), l_0, [], [], [], []
    c = torch.zeros_like(h)
    for t in range(T):
        locs.append(l)
        g = F.relu(s.fc3(F.relu(s.fc1(s.retina.foveate(x, l)))) + s.fc4(F.relu(s.fc2(l))))
        if isinstance(r, LSTMCore):
            w = r.cell
            i, f, gg, o = (g @ w.weight_ih.t() + w.bias_ih + h @ w.weight_hh.t()
                           + w.bias_hh).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            h = F.relu(r.i2h(g) + r.h2h(h))
        mu = torch.tanh(model.locator.fc(h.detach()))
        l_raw = (mu + std * eps[t]).detach()
        hs.append(h)
        log_pi.append(torch.distributions.Normal(mu, std).log_prob(l_raw).sum(1))
        b.append(model.baseliner.fc(h.detach()).squeeze(1))
        l = l_raw.clamp(-1, 1)
    return Rollout(F.log_softmax(model.classifier.fc(h), 1), torch.stack(log_pi, 1),
                   torch.stack(b, 1), torch.stack(locs, 1)), torch.stack(hs, 1)


@pytest.mark.parametrize("std", [0.2, 1.5])
def test_forward_equals_plain_equations(std):
    """The batched model gives what the plain loop of the paper's equations gives. With a wide
    policy (std 1.5) most samples fall outside [-1, 1]: the glimpse is taken at the clamped
    location and log pi is of the raw sample, as in the seed."""
    torch.manual_seed(1)
    model = RecurrentAttention(ModelConfig(patch_size=8, num_patches=2, glimpse_scale=2, std=std))
    x, l_0 = torch.randn(9, 1, 28, 28), torch.tensor([[0.1, -0.4], [1.0, 1.0], [-1.0, 0.3]] * 3)
    torch.manual_seed(7)
    out = model(x, l_0, 4)
    torch.manual_seed(7)
    expected, _ = plain_rollout(model, x, l_0, 4, torch.randn(4, 9, 2))
    assert out.log_probas.shape == (9, 10) and out.log_pi.shape == out.b.shape == (9, 4)
    assert torch.equal(out.locs[:, 0], l_0)  # the first glimpse is taken at l_0
    assert out.locs.abs().max() <= 1
    if std > 1:
        assert (out.locs[:, 1:].abs() == 1).float().mean() > 0.3  # clamping happened
    for name, a, b in zip(Rollout._fields, out, expected):
        torch.testing.assert_close(a, b, msg=name)


def test_core_network_h0_is_zero():
    """h_prev=None skips h2h's product on h_0 = 0: exactly the floats of h_0 = zeros (the
    plain equation's up to the order of the bias additions)."""
    torch.manual_seed(2)
    rnn = RecurrentAttention().rnn
    g, h_0 = torch.randn(5, 256), torch.zeros(5, 256)
    assert torch.equal(rnn(g), rnn(g, h_0))
    torch.testing.assert_close(rnn(g), F.relu(rnn.i2h(g) + rnn.h2h(h_0)))
    h = torch.randn(5, 256)  # and any other h_{t-1}
    torch.testing.assert_close(rnn(g, h), F.relu(rnn.i2h(g) + rnn.h2h(h)))


def test_networks_per_step_equal_plain_equations():
    """The glimpse loop's per-step functions (weights transposed, biases summed) compute the
    paper's equations."""
    torch.manual_seed(11)
    model = RecurrentAttention()
    s, r = model.sensor, model.rnn
    phi, l = torch.randn(4, 64), torch.rand(4, 2) * 2 - 1
    h, eps = torch.rand(4, 256), torch.randn(4, 2)
    torch.testing.assert_close(s.per_step()(phi, l),
                               F.relu(s.fc3(F.relu(s.fc1(phi))) + s.fc4(F.relu(s.fc2(l)))))
    torch.testing.assert_close(r.per_step()(s(phi, l), h), F.relu(r.i2h(s(phi, l)) + r.h2h(h)))
    l_t = model.locator.per_step()(h, eps)
    torch.testing.assert_close(l_t, torch.tanh(model.locator.fc(h)) + model.std * eps)
    assert not l_t.requires_grad  # the policy's action, even with autograd on


@pytest.mark.parametrize("k,core", [(1, "rnn"), (3, "rnn"), (3, "lstm")])
def test_gradients_equal_plain_backprop(k, core):
    """Every parameter's gradient of the hybrid loss equals backprop through the plain loop,
    and evaluation without autograd gives the same loss."""
    torch.manual_seed(8)
    model = RecurrentAttention(ModelConfig(patch_size=6, num_patches=k, glimpse_scale=2, core=core))
    x, y, l_0 = torch.randn(7, 1, 28, 28), torch.randint(0, 10, (7,)), torch.rand(7, 2) * 2 - 1
    torch.manual_seed(9)
    ours = loss_terms(model(x, l_0, 5), y).total
    ours.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(9)
    plain = loss_terms(plain_rollout(model, x, l_0, 5, torch.randn(5, 7, 2))[0], y).total
    plain.backward()
    torch.testing.assert_close(ours, plain)
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=n)
    torch.manual_seed(9)
    with torch.no_grad():
        evaluated = model(x, l_0, 5)
    torch.testing.assert_close(loss_terms(evaluated, y).total, plain.detach())


@pytest.mark.parametrize("T", [1, 2, 6])
def test_bptt_equals_autograd_in_float64(T):
    """GlimpseLoop's hand-written backward against autograd through the plain loop, in
    float64 so that any mistake shows above rounding, for a loss on every h_t (the hybrid loss
    reads only h_T) and for T = 1, where nothing recurs."""
    torch.manual_seed(10)
    model = RecurrentAttention(ModelConfig(patch_size=6, num_patches=2, glimpse_scale=2)).double()
    x, l_0 = torch.randn(5, 1, 28, 28, dtype=torch.float64), torch.rand(5, 2).double() * 2 - 1
    eps = torch.randn(T, 5, 2, dtype=torch.float64)
    c = torch.randn(5, T, 256, dtype=torch.float64)  # dL/dh_t for every t
    see = partial(model.sensor.retina.glimpse, model.sensor.retina.prepare(x))
    h, _, _ = GlimpseLoop.apply(model, see, None, l_0, eps, *model.trunk_parameters())
    got = torch.autograd.grad((h * c).sum(), model.trunk_parameters())
    _, plain = plain_rollout(model, x, l_0, T, eps)
    expected = torch.autograd.grad((plain * c).sum(), model.trunk_parameters())
    torch.testing.assert_close(h, plain, rtol=1e-12, atol=1e-12)
    names = [n for n, p in model.named_parameters() if n.startswith(("sensor.", "rnn."))]
    assert len(names) == len(got) == 12
    for n, a, b in zip(names, got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=n)
    # and against the networks' own per_step code under autograd (what --autograd=True
    # runs): an edited per_step whose derivative was not updated fails here
    h, _, _, _, _ = glimpse_loop(model, see, None, l_0, eps)
    expected = torch.autograd.grad((h * c).sum(), model.trunk_parameters(), allow_unused=True)
    expected = [torch.zeros_like(p) if e is None else e  # T = 1: h2h never multiplies h_0 = 0
                for e, p in zip(expected, model.trunk_parameters())]
    for n, a, b in zip(names, got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=n)


def test_autograd_switch_trains_the_same_model(monkeypatch):
    """--autograd=True: the same rollout and the same gradients (up to float summation order)
    as the written-out backward, without GlimpseLoop."""
    results = []
    apply = GlimpseLoop.apply
    for autograd in (False, True):
        used = []
        monkeypatch.setattr(GlimpseLoop, "apply", lambda *a: used.append(1) or apply(*a))
        torch.manual_seed(12)
        model = RecurrentAttention(ModelConfig(patch_size=6, num_patches=2, autograd=autograd))
        x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
        out = model(x, torch.rand(6, 2) * 2 - 1, 4)
        loss = loss_terms(out, y).total
        assert used == ([] if autograd else [1])
        loss.backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = results
    for name, u, v in zip(Rollout._fields, a, b):
        torch.testing.assert_close(u, v, msg=name)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], msg=n)


def test_log_prob_is_the_gaussian_density():
    loc = LocationNetwork(4, 2, std=0.17)
    mu, l_t = torch.rand(6, 2) - 0.5, torch.rand(6, 2) * 2 - 1
    expected = torch.distributions.Normal(mu, 0.17).log_prob(l_t).sum(-1)
    torch.testing.assert_close(loc.log_prob(mu, l_t), expected)


def test_loss_equals_plain_reference():
    """nll + mse(b, R) + 0.01 * mean_batch(sum_t -log_pi * (R - b)), in plain Python."""
    torch.manual_seed(2)
    B, T = 4, 3
    log_probas = F.log_softmax(torch.randn(B, 10), 1)
    y = log_probas.argmax(1)
    y[0] = (y[0] + 1) % 10  # one wrong, three right
    out = Rollout(log_probas, torch.randn(B, T), torch.rand(B, T), torch.zeros(B, T, 2))
    losses = loss_terms(out, y)
    R = [0.0, 1.0, 1.0, 1.0]
    nll = -sum(log_probas[i, y[i]].item() for i in range(B)) / B
    mse = sum((out.b[i, t].item() - R[i]) ** 2 for i in range(B) for t in range(T)) / (B * T)
    rf = sum(sum(-out.log_pi[i, t].item() * (R[i] - out.b[i, t].item()) for t in range(T))
             for i in range(B)) / B
    assert losses.R.tolist() == R
    assert math.isclose(losses.total.item(), nll + mse + 0.01 * rf, rel_tol=1e-5)


def grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_gradients_flow_where_the_paper_says():
    torch.manual_seed(3)
    model = RecurrentAttention()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    losses = loss_terms(model(x, torch.rand(16, 2) * 2 - 1, 6), y)
    core = {n for n, _ in model.named_parameters() if n.startswith(("sensor.", "rnn."))}
    # the classifier trains the classifier, core and glimpse networks, never the policy
    assert grads(model, losses.action) == core | {"classifier.fc.weight", "classifier.fc.bias"}
    # REINFORCE trains the location network alone
    assert grads(model, losses.reinforce) == {"locator.fc.weight", "locator.fc.bias"}
    # the baseline's regression trains the baseline alone
    assert grads(model, losses.baseline) == {"baseliner.fc.weight", "baseliner.fc.bias"}


@pytest.mark.parametrize("B", [1, 2])
def test_tiny_batches(B):
    """The seed's b_t.squeeze() broke at batch size 1."""
    model = RecurrentAttention()
    out = model(torch.randn(B, 1, 28, 28), torch.zeros(B, 2), 6)
    losses = loss_terms(out, torch.zeros(B, dtype=torch.long))
    losses.total.backward()
    assert out.b.shape == (B, 6) and torch.isfinite(losses.total)


@pytest.mark.slow  # compiling takes a while
def test_compiled_rollout_matches_eager(monkeypatch):
    """--compile=True runs the trainer's rollout and loss as one compiled function (C++ wrapper
    on CPU): the same computation within float error, for training (forward and backward)
    and for evaluation on M copies. Compiled code draws its noise with its own generator;
    fallback_random makes it eager's."""
    import torch._inductor.config
    from model import compiled
    from trainer import rollout
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    model = RecurrentAttention(ModelConfig(num_glimpses=3))
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    l_0, l_eval = torch.rand(8, 2) * 2 - 1, torch.rand(16, 2) * 2 - 1
    results = []
    for run in (rollout, compiled(rollout, torch.device("cpu"))):
        torch.manual_seed(5)
        out, losses = run(model, x, y, l_0)
        model.zero_grad()
        losses.total.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        torch.manual_seed(6)
        with torch.no_grad():
            _, eval_losses = run(model, x, y, l_eval, 2)
        results.append((*out, *losses, *eval_losses, grads))
    for a, b in zip(*(r[:-1] for r in results)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    (*_, eager_grads), (*_, compiled_grads) = results
    for n in eager_grads:
        torch.testing.assert_close(compiled_grads[n], eager_grads[n], rtol=1e-4, atol=1e-5,
                                   msg=n)


def test_adam_falls_back_where_fused_is_missing(monkeypatch):
    """Fused Adam on CPU needs torch 2.4; an older torch raises RuntimeError for fused=True."""
    from utils import adam
    params = [torch.nn.Parameter(torch.ones(3))]
    assert adam(params, 1e-3, torch.device("cpu")).defaults["fused"]
    real = torch.optim.Adam

    def old_adam(p, lr, fused=None):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be CUDA tensors")
        return real(p, lr=lr)

    monkeypatch.setattr(torch.optim, "Adam", old_adam)
    opt = adam(iter(params), 1e-3, torch.device("cpu"))  # a generator, as parameters() is
    assert not opt.defaults["fused"] and opt.param_groups[0]["params"] == params


def test_lstm_core_follows_the_lstm_equations():
    """--core=lstm: h_t from the gates i, f, g, o of W_ih g_t + W_hh h_{t-1} + b, with
    c_t = f * c_{t-1} + i * g, h_t = o * tanh(c_t), from h_0 = c_0 = 0, over three steps;
    and the model trains it through autograd (no GlimpseLoop)."""
    torch.manual_seed(13)
    core = LSTMCore(5, 4)
    W_ih, W_hh = core.cell.weight_ih, core.cell.weight_hh
    b = core.cell.bias_ih + core.cell.bias_hh
    step = core.per_step()
    h = c = torch.zeros(3, 4)
    got = None
    for t in range(3):
        g_t = torch.randn(3, 5)
        i, f, g, o = (g_t @ W_ih.t() + h @ W_hh.t() + b).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        got = step(g_t, got)
        torch.testing.assert_close(got, h)
    model = RecurrentAttention(ModelConfig(core="lstm"))
    assert model.autograd and isinstance(model.rnn, LSTMCore)


def tanh_glimpse_per_step(self):
    """GlimpseNetwork.per_step with its last relu_ edited into tanh_."""
    W1, b1, W2, b2 = self.fc1.weight.t(), self.fc1.bias, self.fc2.weight.t(), self.fc2.bias
    W3, W4, b34 = self.fc3.weight.t(), self.fc4.weight.t(), self.fc3.bias + self.fc4.bias

    def g_t(phi, l_prev):
        what = torch.addmm(b1, phi, W1).relu_()
        where = torch.addmm(b2, l_prev, W2).relu_()
        return torch.addmm(b34, what, W3).addmm_(where, W4).tanh_()
    return g_t


def tanh_core_per_step(self):
    """CoreNetwork.per_step with its relu_ edited into tanh_."""
    W_i, W_h, b = self.i2h.weight.t(), self.h2h.weight.t(), self.i2h.bias + self.h2h.bias

    def h_t(g_t, h_prev=None):
        z = torch.addmm(b, g_t, W_i)
        return (z if h_prev is None else z.addmm_(h_prev, W_h)).tanh_()
    return h_t


@pytest.mark.parametrize("cls,per_step,method", [
    ("GlimpseNetwork", tanh_glimpse_per_step, "weight_grads"),
    ("CoreNetwork", tanh_core_per_step, "backward_through_time")])
def test_an_edited_forward_without_its_derivative_is_stopped(monkeypatch, cls, per_step, method):
    """relu_ -> tanh_ on the last line of a network's per_step: the written-out derivative no
    longer matches, and check_derivatives names the network, the method to update and
    --autograd=True; with autograd on the edited model passes, and the unedited one does."""
    from model import DerivativeMismatch, check_derivatives
    import modules
    plain, auto = RecurrentAttention(ModelConfig(num_patches=2)), RecurrentAttention(
        ModelConfig(num_patches=2, autograd=True))
    state = torch.get_rng_state()
    check_derivatives(plain)
    monkeypatch.setattr(getattr(modules, cls), "per_step", per_step)
    with pytest.raises(DerivativeMismatch) as e:
        check_derivatives(plain)
    assert str(e.value).startswith(f"{cls}'s forward no longer matches")
    assert f"{cls}.{method} in modules.py" in str(e.value) and "--autograd=True" in str(e.value)
    check_derivatives(auto)
    assert torch.equal(torch.get_rng_state(), state)  # the check draws from no global stream
