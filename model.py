"""The Recurrent Attention Model: the networks of modules.py wired over T glimpses.

    python -c "import torch, model; m = model.RecurrentAttention(model.ModelConfig()); \
print(m(torch.randn(4, 1, 28, 28), torch.zeros(4, 2)).log_probas.shape)"
"""
import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules import (ActionNetwork, BaselineNetwork, CoreNetwork, GlimpseNetwork,
                     LocationNetwork, LSTMCore)
from utils import UserError


class Rollout(NamedTuple):
    log_probas: torch.Tensor  # (B, classes) log softmax after the last glimpse
    log_pi: torch.Tensor  # (B, T) log pi(l_t) of the locations l_1..l_T the policy chose
    b: torch.Tensor  # (B, T) baselines b_1..b_T
    locs: torch.Tensor  # (B, T, 2) where glimpses 1..T were taken: l_0..l_{T-1}
    # a game's (config.control): the reward (B,), and the actions a_1..a_T (B, T) taken
    R: Optional[torch.Tensor] = None
    actions: Optional[torch.Tensor] = None


@dataclass
class ModelConfig:
    """Everything that builds a RecurrentAttention, as nanoGPT's GPTConfig; a checkpoint keeps
    it as model_args. The names are main.py's flags; channels and num_classes come from the
    data."""
    patch_size: int = 8  # g: side of the smallest patch
    num_patches: int = 1  # k: patches per glimpse
    glimpse_scale: int = 2  # s: each next patch s times wider
    channels: int = 1  # C
    glimpse_hidden: int = 128  # h_g: the "what" layer
    loc_hidden: int = 128  # h_l: the "where" layer
    hidden_size: int = 256  # h_t
    num_classes: int = 10
    num_glimpses: int = 6  # T
    core: str = "rnn"  # rnn: the paper's rectifier core; lstm
    std: float = 0.17  # the location policy's standard deviation
    random_glimpses: bool = False  # l_1.. uniform at random, not the policy's (the paper's row)
    full_screen: bool = False  # the whole image every step instead of the retina's glimpse
    autograd: bool = False  # the glimpse loop under autograd, not its written-out derivative
    model: str = "ram"  # or a baseline of baselines.py (fc, convnet)
    height: int = 28  # the images' size: the baselines' first layer depends on it
    width: int = 28
    control: bool = False  # a game: an action a_t at every step, not a class after the last

    @classmethod
    def of(cls, settings, **given):
        """The fields found in settings (a config's vars, a checkpoint's params), then given."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in settings.items() if k in names}, **given})

    def network(self):
        """{flag: value} of the fields that make the network what it is, but those the data
        gives (channels, classes), how it is trained and how widely its policy samples (--std
        may differ at test, as in the seed)."""
        d = dataclasses.asdict(self)
        for k in ("channels", "num_classes", "height", "width", "std", "autograd", "control"):
            del d[k]
        if self.model != "ram":  # a baseline has no sensor, core or policy
            keep = ("model", "hidden_size") if self.model == "fc" else ("model",)
            d = {k: d[k] for k in keep}
        return d


class RecurrentAttention(nn.Module):
    """RAM: glimpse (rho + glimpse network), core RNN, location policy, classifier, baseline.

    Submodule and parameter names are the seed's (sensor.fc1..fc4, rnn.i2h, rnn.h2h,
    locator.fc, classifier.fc, baseliner.fc), so the seed's checkpoints load.
    """

    def __init__(self, config=None):
        super().__init__()
        c = self.config = config or ModelConfig()
        self.std, self.num_glimpses = c.std, c.num_glimpses
        # True: the glimpse loop under autograd, not GlimpseLoop (which knows the rnn core only)
        self.autograd = c.autograd or c.core != "rnn"
        self.hidden_size = c.hidden_size
        self.sensor = GlimpseNetwork(h_g=c.glimpse_hidden, h_l=c.loc_hidden, g=c.patch_size,
                                     k=c.num_patches, s=c.glimpse_scale, c=c.channels,
                                     full_screen=(c.height, c.width) if c.full_screen else None)
        core = CoreNetwork if c.core == "rnn" else LSTMCore
        self.rnn = core(c.glimpse_hidden + c.loc_hidden, c.hidden_size)
        self.locator = LocationNetwork(c.hidden_size, 2, c.std)
        self.classifier = ActionNetwork(c.hidden_size, c.num_classes)
        self.baseliner = BaselineNetwork(c.hidden_size, 1, critic=c.control)
        self.greedy = None  # a game's actions: None, the most likely in eval mode only

    def forward(self, x, l_0, num_glimpses=None, eps=None):
        """Runs T glimpses (num_glimpses, else the config's) on x (B, C, H, W) from l_0 (N, 2),
        N = M * B: row r of the outputs is a rollout on image r % B (as on x.repeat(M, ...)).

        As in the paper (and the seed), the policy also picks a location after the last
        glimpse; that l_T is never looked at but its log pi and b_T enter the loss.
        eps (T, N, 2): the policy's standard normal noise, drawn here when not given.

        With config.control, x is a game (catch.Catch, B = N games), played to its end: a
        glimpse of each frame, then an action: sampled in training, the most likely in eval
        mode, unless self.greedy says which (True or False).
        """
        if self.config.control:
            num_glimpses, device, dtype = x.steps, x.x.device, x.x.dtype
        else:
            num_glimpses, device, dtype = num_glimpses or self.num_glimpses, x.device, x.dtype
        if eps is None:
            eps = torch.randn(num_glimpses, len(l_0), 2, device=device, dtype=dtype)
        if self.config.control:
            actions = []
            def see(l_t):  # the frame changes every step: nothing to prepare once
                return self.sensor.retina.foveate(x.frame(), l_t)
            greedy = not self.training if self.greedy is None else self.greedy
            act = partial(self.act, x, actions, greedy)
        else:  # pad once, not once per glimpse; pre-pool where each image has M copies
            prepared = self.sensor.retina.prepare(x, prepool=len(l_0) > len(x))
            see, act = partial(self.sensor.retina.glimpse, prepared), None
        if torch.is_grad_enabled() and not self.autograd:
            h, l_raw, locs = GlimpseLoop.apply(self, see, act, l_0, eps,
                                               *self.trunk_parameters())
        else:  # no gradient wanted, or autograd's: the plain loop
            h, l_raw, locs, _, _ = glimpse_loop(self, see, act, l_0, eps)
        # mu_t, log pi and b_t do not feed the recurrence: one batched call each
        log_pi = self.locator.log_prob(self.locator(h), l_raw)
        if self.config.random_glimpses:  # no policy acted: nothing for REINFORCE to train
            log_pi = torch.zeros_like(log_pi)
        if not self.config.control:
            return Rollout(self.classifier(h[:, -1]), log_pi, self.baseliner(h), locs)
        # the policy is joint: log pi(l_t, a_t) = log pi(l_t) + log pi(a_t)
        a = torch.stack(actions, 1)
        log_p = self.classifier(h)
        log_pi = log_pi + log_p.gather(2, a.unsqueeze(2)).squeeze(2)
        return Rollout(log_p, log_pi, self.baseliner(h), locs, x.reward(), a)

    def act(self, game, actions, greedy, h_t):
        """a_t from the action network on h_t, sampled or the most likely; the game steps."""
        logits = self.classifier.fc(h_t.detach())
        a = logits.argmax(1) if greedy else torch.multinomial(logits.softmax(1), 1).squeeze(1)
        actions.append(a)
        game.step(a)

    def trunk_parameters(self):
        """What the classifier's loss trains through time: the glimpse and core networks."""
        return [*self.sensor.parameters(), *self.rnn.parameters()]


def glimpse_loop(model, see, act, l_0, eps):
    """The sequential part of a rollout: for t = 1..T, g_t from the glimpse see(l_{t-1}), h_t,
    the policy's raw sample l_t, then act(h_t) where there is an action to take. Returns h_t
    (B, T, hidden), the raw l_t (B, T, 2) and the locations looked at, l_0..l_{T-1} (B, T, 2),
    then phi and g_t as lists of T."""
    random = model.config.random_glimpses
    glimpse_net, core, policy = (m.per_step() for m in (model.sensor, model.rnn, model.locator))
    h_t, l_t = None, l_0  # None: h_0 = 0 (CoreNetwork)
    hs, ls, locs, phis, gs = [], [], [], [], []
    for eps_t in eps:
        phi = see(l_t)
        g_t = glimpse_net(phi, l_t)
        h_t = core(g_t, h_t)
        l_raw = policy(h_t, eps_t)
        if act is not None:
            act(h_t)
        for seq, v in ((hs, h_t), (ls, l_raw), (locs, l_t), (phis, phi), (gs, g_t)):
            seq.append(v)
        # random glimpses: the same noise made uniform on (-1, 1), erf(eps / sqrt 2)
        l_t = torch.erf(eps_t * 0.5**0.5) if random else l_raw.clamp(-1, 1)
    return torch.stack(hs, 1), torch.stack(ls, 1), torch.stack(locs, 1), phis, gs


class GlimpseLoop(torch.autograd.Function):
    """The glimpse and core networks over t = 1..T, with backpropagation through time written
    out: the gradients autograd would give, at a fraction of its cost.

    Autograd would record some 40 small ops per glimpse and form each weight gradient once per
    glimpse from B rows. Here the loop runs without autograd, and backward takes each
    network's own derivative (CoreNetwork.backward_through_time, GlimpseNetwork.weight_grads),
    which steps back through time only along the recurrence and forms every weight gradient
    in one matmul over all B*T rows. No gradient flows through the locations: they are
    actions, trained by REINFORCE, as in the paper. The trunk parameters are passed in only
    so that autograd delivers their gradients.
    """

    @staticmethod
    def forward(ctx, model, see, act, l_0, eps, *trunk_parameters):
        h, l_raw, locs, phi, g = glimpse_loop(model, see, act, l_0, eps)
        ctx.model = model
        ctx.save_for_backward(h, locs, torch.stack(phi, 1), torch.stack(g, 1))
        ctx.mark_non_differentiable(l_raw, locs)
        return h, l_raw, locs

    @staticmethod
    def backward(ctx, dh, _, __):
        h, locs, phi, g = ctx.saved_tensors
        core_grads, dg = ctx.model.rnn.backward_through_time(dh, h, g)
        rows = (v.flatten(0, 1) for v in (phi, locs, g))  # (B*T, ...): time no longer matters
        glimpse_grads = ctx.model.sensor.weight_grads(dg, *rows)
        return (None, None, None, None, None, *glimpse_grads, *core_grads)


class DerivativeMismatch(UserError):
    """An edited forward whose written-out derivative was not changed with it."""


def check_derivatives(model):
    """With the written-out backward in use, stops a model whose networks' forward no longer
    matches their derivative (an edited per_step): GlimpseLoop's gradients against autograd's
    through the same forward, in float64, on a tiny batch (milliseconds). Raises
    DerivativeMismatch naming the network. The global random stream is left as it was."""
    if model.autograd:
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = RecurrentAttention(model.config).double()
        B, T, n = 4, 3, ref.sensor.retina.sizes[-1]
        x = torch.randn(B, model.config.channels, n, n, dtype=torch.float64)
        l_0 = torch.rand(B, 2, dtype=torch.float64) * 2 - 1
        eps = torch.randn(T, B, 2, dtype=torch.float64)
        dh = torch.randn(B, T, model.hidden_size, dtype=torch.float64)  # dL/dh_t, every t
    see = partial(ref.sensor.retina.glimpse, ref.sensor.retina.prepare(x))
    params = ref.trunk_parameters()
    h = GlimpseLoop.apply(ref, see, None, l_0, eps, *params)[0]
    written = torch.autograd.grad((h * dh).sum(), params)
    h = glimpse_loop(ref, see, None, l_0, eps)[0]
    auto = torch.autograd.grad((h * dh).sum(), params, allow_unused=True)
    # the core first: a core whose derivative is off sends a wrong dL/dg_t to the glimpse net
    split = len(list(ref.sensor.parameters()))
    for net, method, rows in ((ref.rnn, "backward_through_time", slice(split, None)),
                              (ref.sensor, "weight_grads", slice(0, split))):
        for a, b in zip(written[rows], auto[rows]):
            b = torch.zeros_like(a) if b is None else b  # h2h never multiplies h_0 = 0
            if not torch.allclose(a, b, rtol=1e-7, atol=1e-9):
                name = type(net).__name__
                raise DerivativeMismatch(
                    f"{name}'s forward no longer matches its written-out derivative "
                    f"({name}.{method} in modules.py): train with --autograd=True, or update "
                    f"{name}.{method} to the edited forward")


def compiled(fn, device):
    """torch.compile of fn, a rollout and its loss, for --compile: one static graph per batch
    shape (a training batch, the last one, validation's and test's). On CPU, inductor's C++
    wrapper launches the kernels from C++, not Python: at batch 32 a step is mostly launches
    (1.14-1.21x a step over a plain compile, 1.33-1.45x over eager, paired). On CUDA, for the
    same reason, each graph is replayed as a CUDA graph ("reduce-overhead"), one launch for
    the hundreds of small kernels of a rollout: 4.3x a training step over eager on an H100
    (6.1x with the LSTM core)."""
    if device.type == "cuda":
        return torch.compile(fn, dynamic=False, mode="reduce-overhead")
    return torch.compile(fn, dynamic=False, options={"cpp_wrapper": True})


# a game's loss (see loss_terms): the advantage's lambda, the action policy's entropy bonus
GAE_LAMBDA, ENTROPY_BONUS = 0.95, 0.02


class Losses(NamedTuple):
    action: torch.Tensor  # NLL of the classifier after the last glimpse
    baseline: torch.Tensor  # MSE of b_t against R
    reinforce: torch.Tensor  # mean over the batch of sum_t -log pi_t * A_t
    R: torch.Tensor  # (B,) reward: 1.0 where the classification is right, or the game's
    entropy: Optional[torch.Tensor] = None  # a game's: the action policy's mean entropy

    @property
    def total(self):
        """The hybrid loss, weighted as in the seed; a game's as an actor-critic's."""
        if self.entropy is None:
            return self.action + self.baseline + 0.01 * self.reinforce
        return self.reinforce + 0.5 * self.baseline - ENTROPY_BONUS * self.entropy


def advantages(b, R, lam):
    """GAE(lam) of baselines b (B, T) and final rewards R (B,), undiscounted: A_t = sum_k
    lam^k delta_{t+k}, delta_t = b_{t+1} - b_t with b_{T+1} = R. lam = 1 gives R - b_t."""
    delta = torch.cat([b[:, 1:], R.unsqueeze(1)], 1) - b
    steps = torch.arange(b.shape[1], device=b.device, dtype=b.dtype)
    ahead = steps.unsqueeze(1) - steps  # [k, t] = k - t
    return delta @ torch.where(ahead >= 0, lam ** ahead.clamp(min=0), 0.0)


def loss_terms(out, y):
    """The hybrid loss of the paper for a Rollout and labels y (B,).

    R = 1 for a right classification after the last glimpse, else 0, at every step; the
    baseline b_t is detached in the REINFORCE term, so that term trains the policy alone.

    A game's rollout brings its own R, and no labels: no supervised term, and the loss of an
    actor-critic. Its actions are the policy's, their log pi already in log_pi, so REINFORCE
    trains them with the locations, on the advantage GAE(0.95) of the critic b_t (lower
    variance than R - b_t, which lambda = 1 gives), with a bonus for the actions' entropy
    (a policy certain too soon stops exploring); b_t is fitted to R as the classifiers' is.
    """
    if out.R is None:
        R = (out.log_probas.argmax(1) == y).float()
        action = F.nll_loss(out.log_probas, y)
    else:
        R, action = out.R, out.b.new_zeros(())
    R_t = R.unsqueeze(1).expand_as(out.b)
    # a baseline network (no glimpses, no b_t) leaves the classifier's loss alone
    baseline = F.mse_loss(out.b, R_t) if out.b.numel() else out.b.sum()
    game = out.R is not None
    A = advantages(out.b.detach(), R, GAE_LAMBDA) if game else R_t - out.b.detach()
    reinforce = (-out.log_pi * A).sum(1).mean()
    entropy = -(out.log_probas.exp() * out.log_probas).sum(-1).mean() if game else None
    return Losses(action, baseline, reinforce, R, entropy)
