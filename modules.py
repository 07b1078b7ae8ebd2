"""The five networks of RAM (Mnih et al. 2014) and its glimpse sensor, one class each.

Shapes: B batch, C channels, g patch side, k patches per glimpse, T glimpses.
Locations l are (x, y) = (column, row) in [-1, 1]^2, (0, 0) the image centre.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Retina:
    """The glimpse sensor rho(x_t, l_{t-1}): k patches centred at l, the first g x g and each
    next one s times wider, each average-pooled down to g x g, flattened into phi.

    Exactly the seed's sensor (centre c = floor((l + 1) / 2 * size), top-left corner c - n // 2,
    zeros outside the image) but with no Python loop over the batch: each scale's image is
    box-filtered once (avg_pool2d with stride 1), after which a pooled patch is just a strided
    g x g gather, so one `gather` serves every image and every scale.
    """

    def __init__(self, g, k, s):
        self.g, self.k, self.s = g, k, s
        self.sizes = [g * s**i for i in range(k)]
        self.pad = self.sizes[-1]  # enough for any centre in [0, H] and any patch
        self._index = {}  # (H, W, device) -> (base, row_stride), built once per image size

    def prepare(self, x):
        """Pads and box-filters x (B, C, H, W) once; the result serves every glimpse of x."""
        B, C, H, W = x.shape
        P = self.pad
        x = F.pad(x, (P, P, P, P))
        flat = [x.flatten(2)]  # scale 0 needs no pooling
        for n in self.sizes[1:]:
            f = n // self.g
            flat.append(F.avg_pool2d(x, f, stride=1).flatten(2))
        flat = torch.cat(flat, 2) if len(flat) > 1 else flat[0]
        return flat, H, W

    def _indices(self, H, W, device):
        key = (H, W, device)
        if key not in self._index:
            g, P = self.g, self.pad
            Hp, Wp = H + 2 * P, W + 2 * P
            base, stride, offset = [], [], 0
            a = torch.arange(g)
            for n in self.sizes:
                f = n // g
                Hq, Wq = Hp - f + 1, Wp - f + 1  # pooled image size
                rows = P - n // 2 + a * f
                cols = P - n // 2 + a * f
                base.append(offset + rows[:, None] * Wq + cols[None, :])
                stride.append(torch.full((g, g), Wq))
                offset += Hq * Wq
            base = torch.stack(base).flatten().to(device)
            stride = torch.stack(stride).flatten().to(device)
            self._index[key] = (base, stride)
        return self._index[key]

    def centre(self, l, H, W):
        """Pixel centre (column, row) of location l, with the seed's arithmetic."""
        size = torch.tensor([W, H], dtype=l.dtype, device=l.device)
        return (0.5 * ((l + 1.0) * size)).long()

    def glimpse(self, prepared, l):
        """phi (B, k*C*g*g) at l (B, 2) from the output of prepare()."""
        flat, H, W = prepared
        B, C, _ = flat.shape
        base, stride = self._indices(H, W, flat.device)
        c = self.centre(l, H, W)
        idx = base + c[:, 1:2] * stride + c[:, 0:1]  # (B, k*g*g)
        phi = flat.gather(2, idx.unsqueeze(1).expand(B, C, idx.shape[1]))
        # (B, C, k, g*g) -> (B, k, C, g*g): the seed stacks the scales along channels
        phi = phi.view(B, C, self.k, -1).transpose(1, 2)
        return phi.reshape(B, -1)

    def foveate(self, x, l):
        """phi (B, k*C*g*g) for images x (B, C, H, W) at locations l (B, 2)."""
        return self.glimpse(self.prepare(x), l)


class GlimpseNetwork(nn.Module):
    """Eq. glimpse network: g_t = relu(fc3(relu(fc1(phi))) + fc4(relu(fc2(l_{t-1}))))."""

    def __init__(self, h_g, h_l, g, k, s, c):
        super().__init__()
        self.retina = Retina(g, k, s)
        self.fc1 = nn.Linear(k * g * g * c, h_g)  # phi -> what
        self.fc2 = nn.Linear(2, h_l)  # l -> where
        self.fc3 = nn.Linear(h_g, h_g + h_l)
        self.fc4 = nn.Linear(h_l, h_g + h_l)

    def forward(self, phi, l_prev):
        what = self.fc3(F.relu(self.fc1(phi)))
        where = self.fc4(F.relu(self.fc2(l_prev)))
        return F.relu(what + where)


class CoreNetwork(nn.Module):
    """Eq. core network: h_t = relu(i2h(g_t) + h2h(h_{t-1}))."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.i2h = nn.Linear(input_size, hidden_size)
        self.h2h = nn.Linear(hidden_size, hidden_size)

    def forward(self, g_t, h_prev):
        return F.relu(self.i2h(g_t) + self.h2h(h_prev))


class LocationNetwork(nn.Module):
    """Eq. location policy: l_t ~ N(mu_t, std^2 I), mu_t = tanh(fc(h_t)).

    It reads h_t detached, so only REINFORCE trains it. forward returns mu_t and the raw
    sample; log_prob gives log pi(l_t) of that raw sample, as in the seed, and the glimpse
    uses the sample clamped to [-1, 1].
    """

    def __init__(self, input_size, output_size, std):
        super().__init__()
        self.std = std
        self.fc = nn.Linear(input_size, output_size)

    def forward(self, h_t, eps):
        mu = torch.tanh(self.fc(h_t.detach()))
        l_t = (mu + self.std * eps).detach()  # the policy's action: no path back through it
        return mu, l_t

    def log_prob(self, mu, l_t):
        """log N(l_t; mu, std^2 I), summed over x and y: (..., 2) -> (...)."""
        z = (l_t - mu) / self.std
        return -0.5 * (z * z).sum(-1) - 2 * (math.log(self.std) + 0.5 * math.log(2 * math.pi))


class ActionNetwork(nn.Module):
    """Eq. action network: log softmax(fc(h_T)), the classifier after the last glimpse."""

    def __init__(self, input_size, output_size):
        super().__init__()
        self.fc = nn.Linear(input_size, output_size)

    def forward(self, h_t):
        return F.log_softmax(self.fc(h_t), dim=-1)


class BaselineNetwork(nn.Module):
    """Eq. baseline b_t = fc(h_t), fitted to R by MSE; reads h_t detached so it trains alone."""

    def __init__(self, input_size, output_size):
        super().__init__()
        self.fc = nn.Linear(input_size, output_size)

    def forward(self, h_t):
        return self.fc(h_t.detach()).squeeze(-1)  # squeeze(-1), not squeeze(): B may be 1
