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
    zeros outside the image) but with no Python loop over the batch: the images are zero-padded
    once, and every pixel of every patch of every image is fetched by one `gather` with
    precomputed offsets; the wider patches are then average-pooled as in the seed.
    """

    def __init__(self, g, k, s):
        self.g, self.k, self.s = g, k, s
        self.sizes = [g * s**i for i in range(k)]
        self.pad = self.sizes[-1]  # enough for any centre in [0, H] and any patch
        self._offsets = {}  # (H, W, device) -> (base, row_step) of every patch pixel

    def prepare(self, x):
        """Pads x (B, C, H, W) once; the result serves every glimpse of x."""
        B, C, H, W = x.shape
        P = self.pad
        return F.pad(x, (P, P, P, P)).flatten(2), H, W

    def _patch_offsets(self, H, W, device):
        """Flat offset of each patch pixel from the padded image's origin, when c = (0, 0)."""
        key = (H, W, device)
        if key not in self._offsets:
            P, Wp = self.pad, W + 2 * self.pad
            base = []
            for n in self.sizes:
                r = torch.arange(n) + P - n // 2
                base.append((r[:, None] * Wp + r[None, :]).flatten())
            self._offsets[key] = torch.cat(base).to(device)
        return self._offsets[key]

    def centre(self, l, H, W):
        """Pixel centre (column, row) of location l, with the seed's arithmetic (size * ...)."""
        x = (0.5 * ((l[:, 0] + 1.0) * W)).long()
        y = (0.5 * ((l[:, 1] + 1.0) * H)).long()
        # a no-op for l in [-1, 1]; a NaN l (a diverged policy) must not index out of bounds
        # before the loss can report it
        return x.clamp(0, W), y.clamp(0, H)

    def glimpse(self, prepared, l):
        """phi (B, k*C*g*g) at l (B, 2) from the output of prepare()."""
        flat, H, W = prepared
        B, C, _ = flat.shape
        base = self._patch_offsets(H, W, flat.device)
        cx, cy = self.centre(l, H, W)
        idx = base + (cy * (W + 2 * self.pad) + cx).unsqueeze(1)  # (B, sum n^2)
        pixels = flat.gather(2, idx.unsqueeze(1).expand(B, C, idx.shape[1]))
        if self.k == 1:
            return pixels.reshape(B, -1)
        phi, start = [], 0
        for n in self.sizes:
            patch = pixels[:, :, start:start + n * n].reshape(B, C, n, n)
            phi.append(F.avg_pool2d(patch, n // self.g) if n > self.g else patch)
            start += n * n
        return torch.cat(phi, 1).reshape(B, -1)  # scales stacked along channels, as the seed

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
