"""The Recurrent Attention Model: the networks of modules.py wired over T glimpses.

    python -c "import torch, model; m = model.RecurrentAttention(); \
print(m(torch.randn(4, 1, 28, 28), torch.zeros(4, 2), 6).log_probas.shape)"
"""
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules import (ActionNetwork, BaselineNetwork, CoreNetwork, GlimpseNetwork,
                     LocationNetwork)


class Rollout(NamedTuple):
    log_probas: torch.Tensor  # (B, classes) log softmax after the last glimpse
    log_pi: torch.Tensor  # (B, T) log pi(l_t) of the locations l_1..l_T the policy chose
    b: torch.Tensor  # (B, T) baselines b_1..b_T
    locs: torch.Tensor  # (B, T, 2) where glimpses 1..T were taken: l_0..l_{T-1}


class RecurrentAttention(nn.Module):
    """RAM: glimpse (rho + glimpse network), core RNN, location policy, classifier, baseline.

    Submodule and parameter names are the seed's (sensor.fc1..fc4, rnn.i2h, rnn.h2h,
    locator.fc, classifier.fc, baseliner.fc), so the seed's checkpoints load.
    """

    def __init__(self, g=8, k=1, s=2, c=1, h_g=128, h_l=128, std=0.17, hidden_size=256,
                 num_classes=10):
        super().__init__()
        self.std = std
        self.hidden_size = hidden_size
        self.sensor = GlimpseNetwork(h_g, h_l, g, k, s, c)
        self.rnn = CoreNetwork(h_g + h_l, hidden_size)
        self.locator = LocationNetwork(hidden_size, 2, std)
        self.classifier = ActionNetwork(hidden_size, num_classes)
        self.baseliner = BaselineNetwork(hidden_size, 1)

    def forward(self, x, l_0, num_glimpses):
        """Runs T = num_glimpses glimpses on x (B, C, H, W) from l_0 (B, 2).

        As in the paper (and the seed), the policy also picks a location after the last
        glimpse; that l_T is never looked at but its log pi and b_T enter the loss.
        """
        B, T = x.shape[0], num_glimpses
        retina = self.sensor.retina
        prepared = retina.prepare(x)  # pad and pool once, not once per glimpse
        eps = torch.randn(T, B, 2, device=x.device, dtype=x.dtype)
        h_t = x.new_zeros(B, self.hidden_size)
        l_t = l_0
        hs, mus, ls, locs = [], [], [], []
        for t in range(T):
            locs.append(l_t)
            g_t = self.sensor(retina.glimpse(prepared, l_t), l_t)
            h_t = self.rnn(g_t, h_t)
            mu, l_raw = self.locator(h_t, eps[t])
            hs.append(h_t)
            mus.append(mu)
            ls.append(l_raw)
            l_t = l_raw.clamp(-1, 1)
        # b_t and log pi do not feed the recurrence: one batched call each after the loop
        log_pi = self.locator.log_prob(torch.stack(mus, 1), torch.stack(ls, 1))
        b = self.baseliner(torch.stack(hs, 1))
        return Rollout(self.classifier(h_t), log_pi, b, torch.stack(locs, 1))


class Losses(NamedTuple):
    action: torch.Tensor  # NLL of the classifier after the last glimpse
    baseline: torch.Tensor  # MSE of b_t against R
    reinforce: torch.Tensor  # mean over the batch of sum_t -log pi(l_t) * (R - b_t)
    R: torch.Tensor  # (B,) reward: 1.0 where the classification is right

    @property
    def total(self):
        """The hybrid loss, weighted as in the seed."""
        return self.action + self.baseline + 0.01 * self.reinforce


def loss_terms(out, y):
    """The hybrid loss of the paper for a Rollout and labels y (B,).

    R = 1 for a right classification after the last glimpse, else 0, at every step; the
    baseline b_t is detached in the REINFORCE term, so that term trains the policy alone.
    """
    R = (out.log_probas.argmax(1) == y).float()
    R_t = R.unsqueeze(1).expand_as(out.b)
    action = F.nll_loss(out.log_probas, y)
    baseline = F.mse_loss(out.b, R_t)
    reinforce = (-out.log_pi * (R_t - out.b.detach())).sum(1).mean()
    return Losses(action, baseline, reinforce, R)
