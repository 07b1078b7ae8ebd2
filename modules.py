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
    once per rollout, and each scale's pixels, for every image, are fetched by one `gather`
    with precomputed offsets; the wider patches are then average-pooled as in the seed.
    """

    def __init__(self, g, k, s):
        self.g, self.k, self.s = g, k, s
        self.sizes = [g * s**i for i in range(k)]
        # a patch of size n centred at c in [0, H] spans rows c - n // 2 .. c - n // 2 + n - 1
        n = self.sizes[-1]
        self.pad = (n // 2, n - n // 2)  # (before, after): the least that holds every patch
        self._offsets = {}  # (W, device) -> flat offsets of each scale's pixels

    def prepare(self, x):
        """Pads x (B, C, H, W) once; the result serves every glimpse of x."""
        B, C, H, W = x.shape
        lo, hi = self.pad
        return F.pad(x, (lo, hi, lo, hi)).flatten(2), H, W

    def _patch_offsets(self, W, device):
        """For each scale, the flat offset of each patch pixel in the padded image when the
        centre is at pixel (0, 0)."""
        key = (W, device)
        if key not in self._offsets:
            lo, Wp = self.pad[0], W + sum(self.pad)
            self._offsets[key] = []
            for n in self.sizes:
                r = torch.arange(n) + lo - n // 2
                self._offsets[key].append((r[:, None] * Wp + r[None, :]).flatten().to(device))
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
        cx, cy = self.centre(l, H, W)
        start = (cy * (W + sum(self.pad)) + cx).unsqueeze(1)  # (B, 1)
        phi = []
        for n, base in zip(self.sizes, self._patch_offsets(W, flat.device)):
            idx = (base + start).unsqueeze(1).expand(B, C, n * n)
            patch = flat.gather(2, idx)
            if n > self.g:
                patch = F.avg_pool2d(patch.view(B, C, n, n), n // self.g)
            phi.append(patch.reshape(B, C * self.g * self.g))
        # the scales stacked along channels, as the seed does
        return torch.cat(phi, 1) if self.k > 1 else phi[0]

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
