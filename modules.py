"""The five networks of RAM (Mnih et al. 2014) and its glimpse sensor, one class each.

Shapes: B batch, C channels, g patch side, k patches per glimpse, T glimpses.
Locations l are (x, y) = (column, row) in [-1, 1]^2, (0, 0) the image centre.
"""
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class Scale(NamedTuple):
    """One scale of the images, made ready for every glimpse of a rollout (Retina.prepare)."""
    flat: torch.Tensor  # (B, C, rows * cols): the zero-padded images (pre-pooled or not)
    stride: torch.Tensor  # (2,) long: (1, cols), a pixel's step in flat along x and y
    offsets: torch.Tensor  # the patch's pixels in flat, relative to its centre's
    pool: int  # the factor to average-pool the fetched pixels by (1: none, or pre-pooled)


def window_mean(x, f):
    """F.avg_pool2d(x, f, stride=1) on (B, C, H, W), the same floats. On CPU, that kernel
    visits each window pixel by pixel; summing the f * f shifted views in its order (row by
    row, from 0) then dividing by f * f gives its floats bit for bit, about 3x faster, when a
    few images at a time (about 1 MB) keep the running sum in cache. Elsewhere (CUDA, or
    traced by torch.compile, which fuses the pooling) avg_pool2d itself is the fast way."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.avg_pool2d(x, f, stride=1)
    H, W = x.shape[-2] - f + 1, x.shape[-1] - f + 1
    images = x.reshape(-1, *x.shape[-2:])
    out = x.new_empty(len(images), H, W)
    n = max(1, 2**18 // (H * W))
    for i in range(0, len(images), n):
        acc, src = out[i:i + n], images[i:i + n]
        acc.copy_(src[:, :H, :W])
        for r in range(f):
            for c in range(f):
                if r or c:
                    acc += src[:, r:r + H, c:c + W]
    return out.div_(f * f).view(*x.shape[:-2], H, W)


def padded_window_mean(padded, f, pad):
    """window_mean(padded, f) of images zero-padded on both axes by pad = (before, after):
    top and left, bottom and right. Only the windows that reach an image pixel are summed (the
    same shifted sums, so the same floats); the others, most of a wide scale's, lie wholly in
    the zeros and are 0."""
    # how many windows, first and last along each axis, lie wholly in the padding
    before, after = (max(0, p - f + 1) for p in pad)
    H, W = padded.shape[-2:]
    block = padded[..., before:H - after, before:W - after]
    return F.pad(window_mean(block, f), (before, after, before, after))


class Retina:
    """The glimpse sensor rho(x_t, l_{t-1}): k patches centred at l, the first g x g and each
    next one s times wider, each average-pooled down to g x g, flattened into phi.

    Exactly the seed's sensor (centre c = floor((l + 1) / 2 * size), top-left corner c - n // 2,
    zeros outside the image) but with no Python loop over the batch: the images are zero-padded
    once per rollout, and each scale's pixels, for every image, are fetched by one `gather`
    with precomputed offsets. A wider patch of side n = g * f is then average-pooled by f as
    in the seed; or, when each image is looked at many times (M copies in evaluation), the
    padded image is pooled once with stride 1, and only the g x g pooled pixels are fetched,
    every f-th: the same windows, summed by the same kernel, so the same floats.
    """

    def __init__(self, g, k, s):
        self.g, self.k, self.s = g, k, s
        self.sizes = [g * s**i for i in range(k)]
        # a patch of size n centred at c in [0, H] spans rows c - n // 2 .. c - n // 2 + n - 1
        n = self.sizes[-1]
        self.pad = (n // 2, n - n // 2)  # (before, after): the least that holds every patch

    def prepare(self, x, prepool=False):
        """Pads x (B, C, H, W) once: the result serves every glimpse of x. prepool: pool the
        wider scales now (worth it when an image gets many more glimpses than T)."""
        B, C, H, W = x.shape
        lo, hi = self.pad
        padded = F.pad(x, (lo, hi, lo, hi))
        limit = torch.tensor([W, H], device=x.device)
        scales = []
        for n in self.sizes:
            # offsets are made per rollout (three small ops a scale), not cached: a cache
            # filled while torch.compile traces would make it compile everything twice
            f = n // self.g if prepool else 1
            img = padded_window_mean(padded, f, self.pad) if f > 1 else padded
            cols = img.shape[-1]
            r = torch.arange(lo - n // 2, lo - n // 2 + n, f, device=x.device)
            scales.append(Scale(img.flatten(2), torch.tensor([1, cols], device=x.device),
                                (r[:, None] * cols + r).flatten(), n // self.g // f))
        return limit.to(x.dtype), limit, scales

    @staticmethod
    def centre(l, size, limit):
        """Pixel centre (column, row) of locations l (B, 2) in an image of (W, H) = size (float)
        = limit (long), with the seed's arithmetic: floor(0.5 * ((l + 1) * size))."""
        c = (0.5 * ((l + 1.0) * size)).long()
        # a no-op for l in [-1, 1]; a NaN l (a diverged policy) must not index out of bounds
        # before the loss can report it
        return torch.minimum(c.clamp_(min=0), limit)

    def glimpse(self, prepared, l):
        """phi (N, k*C*g*g) at l (N, 2) from prepare()'s images (B of them): row r looks at
        image r % B, so N = M * B rows are M copies of each image, as x.repeat(M) would
        give, without M copies of the padded images in memory."""
        size, limit, scales = prepared
        B, C, _ = scales[0].flat.shape
        N = len(l)
        c = self.centre(l, size, limit)
        copy = (torch.arange(N, device=l.device) % B).unsqueeze(1) if N != B else None
        phi = []
        for flat, stride, offsets, pool in scales:
            P = flat.shape[-1]
            idx = offsets + (c * stride).sum(1, keepdim=True)  # (N, pixels), in an image's flat
            if copy is None:
                patch = flat.gather(2, idx.unsqueeze(1).expand(B, C, -1))
            else:  # rows past the B images: fetch from image r % B, channel by channel
                idx = (idx + copy * (C * P)).unsqueeze(1) + torch.arange(
                    C, device=l.device).view(1, C, 1) * P
                patch = flat.reshape(1, 1, -1).expand(N, 1, -1).gather(2, idx.view(N, 1, -1))
            n = self.g * pool
            patch = patch.view(N, C, n, n)
            if pool > 1:
                patch = F.avg_pool2d(patch, pool)
            phi.append(patch.reshape(N, C * self.g * self.g))
        # the scales stacked along channels, as the seed does
        return torch.cat(phi, 1) if self.k > 1 else phi[0]

    def foveate(self, x, l, prepool=False):
        """phi (N, k*C*g*g) for images x (B, C, H, W) at locations l (N, 2)."""
        return self.glimpse(self.prepare(x, prepool), l)


class FullScreen:
    """A sensor that sees the whole image at every step, wherever l points: the full-screen
    agent's (rho(x_t, l) = x_t), to measure what the retina saves. Retina's interface."""

    def prepare(self, x, prepool=False):
        return x.flatten(1)

    def glimpse(self, prepared, l):
        """phi (N, C*H*W): row r sees image r % B, as Retina.glimpse."""
        return prepared.repeat(len(l) // len(prepared), 1)

    def foveate(self, x, l, prepool=False):
        return x.flatten(1)


class GlimpseNetwork(nn.Module):
    """Eq. glimpse network: g_t = relu(fc3(relu(fc1(phi))) + fc4(relu(fc2(l_{t-1}))))."""

    def __init__(self, h_g, h_l, g, k, s, c, full_screen=None):
        super().__init__()
        # full_screen (H, W): the FullScreen sensor on images of that size instead of the retina
        self.retina = FullScreen() if full_screen else Retina(g, k, s)
        phi_size = c * full_screen[0] * full_screen[1] if full_screen else k * g * g * c
        self.fc1 = nn.Linear(phi_size, h_g)  # phi -> what
        self.fc2 = nn.Linear(2, h_l)  # l -> where
        self.fc3 = nn.Linear(h_g, h_g + h_l)
        self.fc4 = nn.Linear(h_l, h_g + h_l)

    def forward(self, phi, l_prev):
        return self.per_step()(phi, l_prev)

    def per_step(self):
        """forward as a function g_t(phi, l_prev) for the T steps of a rollout, the weights laid
        out once: transposed for addmm and fc3's and fc4's biases summed. At batch 32 the
        dispatch of nn.Linear's calls costs about as much as their arithmetic."""
        W1, b1, W2, b2 = self.fc1.weight.t(), self.fc1.bias, self.fc2.weight.t(), self.fc2.bias
        W3, W4, b34 = self.fc3.weight.t(), self.fc4.weight.t(), self.fc3.bias + self.fc4.bias

        def g_t(phi, l_prev):
            what = torch.addmm(b1, phi, W1).relu_()
            where = torch.addmm(b2, l_prev, W2).relu_()
            return torch.addmm(b34, what, W3).addmm_(where, W4).relu_()
        return g_t

    def weight_grads(self, dg, phi, l_prev, g):
        """forward's derivative (change both together): from dL/dg_t (N, h_g + h_l) for N rows
        of forward's phi, l_{t-1} and g_t, the gradients of fc1..fc4 in parameters() order.
        phi and l are not differentiated: they come from the policy's actions."""
        what, where = F.relu(self.fc1(phi)), F.relu(self.fc2(l_prev))  # recomputed, not kept
        dz = relu_grad(dg, g)
        d_what = relu_grad(dz @ self.fc3.weight, what)
        d_where = relu_grad(dz @ self.fc4.weight, where)
        db = dz.sum(0)  # fc3's and fc4's biases add to the same sum
        return [*linear_grads(d_what, phi), *linear_grads(d_where, l_prev),
                dz.t() @ what, db, dz.t() @ where, db]


class CoreNetwork(nn.Module):
    """Eq. core network: h_t = relu(i2h(g_t) + h2h(h_{t-1})), h_0 = 0."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.i2h = nn.Linear(input_size, hidden_size)
        self.h2h = nn.Linear(hidden_size, hidden_size)

    def forward(self, g_t, h_prev=None):
        return self.per_step()(g_t, h_prev)

    def per_step(self):
        """forward as a function h_t(g_t, h_prev) for the T steps of a rollout, the weights laid
        out once (as GlimpseNetwork.per_step). h_prev=None is h_0 = 0: h2h's product is skipped,
        which adds exact zeros."""
        W_i, W_h, b = self.i2h.weight.t(), self.h2h.weight.t(), self.i2h.bias + self.h2h.bias

        def h_t(g_t, h_prev=None):
            z = torch.addmm(b, g_t, W_i)
            return (z if h_prev is None else z.addmm_(h_prev, W_h)).relu_()
        return h_t

    def backward_through_time(self, dh, h, g):
        """forward's derivative over a whole rollout from h_0 = 0 (change both together).

        From dL/dh_t (B, T, hidden) and forward's h_t and g_t (B, T, ...): the gradients of
        i2h and h2h in parameters() order, and dL/dg_t (B*T, input). Only the recurrence
        dL/dz_t = (dL/dh_t + h2h^T dL/dz_{t+1}) * [h_t > 0] goes step by step; each weight
        gradient is then one matmul over all B*T rows.
        """
        dz = torch.empty_like(h)
        dh_t = dh[:, -1]  # dL/dh_T: nothing comes back from after the last step
        for t in reversed(range(h.shape[1])):
            dz[:, t] = relu_grad(dh_t, h[:, t])
            if t:
                dh_t = torch.addmm(dh[:, t - 1], dz[:, t], self.h2h.weight)
        # h2h saw h_1..h_{T-1} at steps 2..T (h_0 = 0 adds nothing to its weight's gradient)
        dW_h2h = dz[:, 1:].flatten(0, 1).t() @ h[:, :-1].flatten(0, 1)
        dz, g = dz.flatten(0, 1), g.flatten(0, 1)
        db = dz.sum(0)  # both biases add to the same z_t
        return [dz.t() @ g, db, dW_h2h, db], dz @ self.i2h.weight


class LSTMCore(nn.Module):
    """The core as an LSTM (the paper's choice for its game; tfRAM's for classification):
    h_t, c_t = LSTM(g_t, (h_{t-1}, c_{t-1})), h_0 = c_0 = 0. Trained through autograd: it has
    no written-out derivative, so a model with it runs the glimpse loop under autograd."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size)

    def per_step(self):
        """h_t(g_t, h_prev) for the T steps of a rollout; the cell state c_t lives here."""
        c = None

        def h_t(g_t, h_prev=None):
            nonlocal c
            h, c = self.cell(g_t, None if h_prev is None else (h_prev, c))
            return h
        return h_t


class LocationNetwork(nn.Module):
    """Eq. location policy: l_t ~ N(mu_t, std^2 I), mu_t = tanh(fc(h_t)).

    It reads h_t detached, so only REINFORCE trains it. forward gives mu_t; per_step draws the
    raw l_t in the glimpse loop, which runs without autograd (l_t is the policy's action, never
    differentiated); its log pi(l_t) enters the loss as in the seed, while the glimpse uses it
    clamped to [-1, 1].
    """

    def __init__(self, input_size, output_size, std):
        super().__init__()
        self.std = std
        self.fc = nn.Linear(input_size, output_size)

    def forward(self, h_t):
        return torch.tanh(self.fc(h_t.detach()))

    def per_step(self):
        """The raw sample as a function l_t(h_t, eps) = mu_t + std * eps, eps ~ N(0, I) given,
        for the T steps of a rollout, the weights laid out once (as GlimpseNetwork.per_step)."""
        W, b, std = self.fc.weight.t(), self.fc.bias, self.std

        def l_t(h_t, eps):
            # the policy's action: never differentiated, even when autograd is on
            return torch.addmm(b, h_t, W).tanh_().add_(eps, alpha=std).detach()
        return l_t

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
    """Eq. baseline b_t = fc(h_t), fitted to R by MSE; reads h_t detached so it trains alone.
    A game's (critic=True) reads h_t whole: fitting the chance of a catch then shapes the core's
    features, as an actor-critic's value does, a signal far richer than the reward's."""

    def __init__(self, input_size, output_size, critic=False):
        super().__init__()
        self.fc = nn.Linear(input_size, output_size)
        self.critic = critic

    def forward(self, h_t):
        # squeeze(-1), not squeeze(): B may be 1
        return self.fc(h_t if self.critic else h_t.detach()).squeeze(-1)


def relu_grad(dy, y):
    """dL/dz of y = relu(z) from dL/dy: autograd's own kernel for relu's derivative, which on
    CPU is several times faster than dy * (y > 0) (a float compare makes a slow bool mask)."""
    return torch.ops.aten.threshold_backward(dy, y, 0)


def linear_grads(dy, x):
    """dL/dW and dL/db of y = x W^T + b, summed over the rows of x (N, in) and dy (N, out)."""
    return dy.t() @ x, dy.sum(0)
