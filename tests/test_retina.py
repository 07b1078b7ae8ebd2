"""The batched retina against a plain per-image, per-pixel reference of the seed's sensor."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modules import Retina, window_mean


def reference_phi(x, l, g, k, s):
    """The seed's sensor written as plainly as possible: loops over images, scales, pixels."""
    x, l = x.numpy(), l.numpy().astype(np.float32)
    B, C, H, W = x.shape
    out = []
    for b in range(B):
        # the seed's arithmetic, in float32: c = floor(0.5 * ((l + 1) * size))
        cx = int(np.floor(np.float32(0.5) * ((l[b, 0] + np.float32(1.0)) * np.float32(W))))
        cy = int(np.floor(np.float32(0.5) * ((l[b, 1] + np.float32(1.0)) * np.float32(H))))
        scales = []
        for i in range(k):
            n = g * s**i
            patch = np.zeros((C, n, n), np.float32)
            for r in range(n):
                for c in range(n):
                    row, col = cy - n // 2 + r, cx - n // 2 + c
                    if 0 <= row < H and 0 <= col < W:
                        patch[:, r, c] = x[b, :, row, col]
            f = n // g
            scales.append(patch.reshape(C, g, f, g, f).mean(axis=(2, 4)))
        out.append(np.concatenate(scales, 0).reshape(-1))
    return torch.from_numpy(np.stack(out))


CORNERS = [(-1, -1), (-1, 1), (1, -1), (1, 1), (0, 0), (-1, 0), (1, 0), (0, -1), (0, 1),
           (0.999, -0.999), (-0.3, 1)]


@pytest.mark.parametrize("g,k,s,C,H,W", [
    (8, 1, 2, 1, 28, 28),  # the seed's default
    (7, 1, 2, 1, 28, 28),  # odd patch: crashed in the seed
    (5, 3, 2, 1, 28, 28),
    (8, 3, 2, 3, 20, 20),  # colour
    (3, 2, 3, 2, 17, 11),  # non-square, odd sizes, s = 3
    (4, 4, 1, 1, 12, 12),  # s = 1: k identical patches
    (12, 3, 2, 1, 60, 60),  # the paper's translated MNIST setting
    (40, 1, 2, 1, 28, 28),  # a patch larger than the image
])
def test_retina_matches_reference(g, k, s, C, H, W):
    gen = torch.Generator().manual_seed(g * 100 + k * 10 + s)
    x = torch.randn(len(CORNERS) + 20, C, H, W, generator=gen)
    l = torch.cat([torch.tensor(CORNERS, dtype=torch.float32),
                   torch.rand(20, 2, generator=gen) * 2 - 1])
    phi = Retina(g, k, s).foveate(x, l)
    assert phi.shape == (len(x), k * C * g * g)
    torch.testing.assert_close(phi, reference_phi(x, l, g, k, s), rtol=1e-6, atol=1e-6)


def test_retina_centre_pixel_and_zero_padding():
    """Hand-checked values: at l = (-1, -1) the 2x2 patch starts at (-1, -1), so only its
    bottom-right pixel is inside the image, and x is the column, y the row."""
    x = torch.arange(16.0).view(1, 1, 4, 4) + 1
    phi = Retina(2, 1, 2).foveate(x, torch.tensor([[-1.0, -1.0]]))
    assert phi.tolist() == [[0.0, 0.0, 0.0, 1.0]]
    # l = (0.5, -1): column floor(0.75 * 4) = 3, row 0 -> patch rows -1..0, columns 2..3
    phi = Retina(2, 1, 2).foveate(x, torch.tensor([[0.5, -1.0]]))
    assert phi.tolist() == [[0.0, 0.0, 3.0, 4.0]]


@pytest.mark.parametrize("g,k,s", [(8, 2, 2), (5, 3, 2)])
def test_one_padding_serves_every_glimpse_of_a_rollout(g, k, s):
    """A rollout pads its images once (prepare) and takes all T glimpses from them: each
    glimpse, at locations that move from corner to corner, is the reference's at that
    location, and taking one leaves the padded images as they were for the next."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 1, 23, 28, generator=gen)
    retina = Retina(g, k, s)
    prepared = retina.prepare(x)
    path = [torch.tensor(CORNERS[i:i + 5], dtype=torch.float32) for i in range(0, 7, 3)]
    path.append(torch.rand(5, 2, generator=gen) * 2 - 1)
    first = retina.glimpse(prepared, path[0])
    for l in path:
        torch.testing.assert_close(retina.glimpse(prepared, l), reference_phi(x, l, g, k, s),
                                   rtol=1e-6, atol=1e-6)
    assert torch.equal(retina.glimpse(prepared, path[0]), first)


@pytest.mark.parametrize("g,k,s,C", [(12, 4, 2, 1), (5, 3, 2, 3), (3, 2, 3, 2), (8, 1, 2, 1),
                                     (1, 3, 2, 1)])  # g = 1: padding narrower than a window
def test_copies_and_prepooling_give_the_same_floats(g, k, s, C):
    """M rows per image (evaluation) fetch from one padded image, and pre-pooled scales
    (stride-1 pooling, every f-th pixel) are the seed's pooled patches, bit for bit."""
    gen = torch.Generator().manual_seed(g + k + s + C)
    B, M = 6, 3
    x = torch.randn(B, C, 31, 26, generator=gen)
    l = torch.cat([torch.tensor(CORNERS[:M * B], dtype=torch.float32),
                   torch.rand(max(0, M * B - len(CORNERS)), 2, generator=gen) * 2 - 1])
    retina = Retina(g, k, s)
    expected = retina.foveate(x.repeat(M, 1, 1, 1), l)  # one padded copy per row
    torch.testing.assert_close(expected, reference_phi(x.repeat(M, 1, 1, 1), l, g, k, s),
                               rtol=1e-6, atol=1e-6)
    for prepool in (False, True):
        assert torch.equal(retina.foveate(x, l, prepool), expected), prepool


@pytest.mark.parametrize("f", [2, 3, 4, 8])
def test_window_mean_is_avg_pool_with_stride_one_bit_for_bit(f):
    """Across several chunks of images (the last one short), channels and a non-square image."""
    x = torch.rand(23, 3, 97, 110, generator=torch.Generator().manual_seed(f)) * 10 - 5
    assert torch.equal(window_mean(x, f), F.avg_pool2d(x, f, stride=1))
