"""Animate where RAM looked: one GIF frame per glimpse on the 9 images training pickled.

    python plot_glimpses.py --plot_dir=plots/ram_6_8x8_2/ --epoch=1

writes plots/ram_6_8x8_2/epoch_1.gif (and epoch_1.png, its last frame). Training leaves
g_<epoch>.p, l_<epoch>.p and params.json in that folder; the flags below override the json.
Headless (matplotlib's Agg and PillowWriter): no display, no ffmpeg.
"""
import json
import os
import pickle
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.animation import FuncAnimation, PillowWriter  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
import numpy as np  # noqa: E402

from config import Parser  # noqa: E402
from model import ModelConfig  # noqa: E402
from utils import UserError  # noqa: E402

COLOUR = "tab:red"


def load(plot_dir, epoch):
    paths = [os.path.join(plot_dir, f"{kind}_{epoch}.p") for kind in ("g", "l")]
    for p in paths:
        if not os.path.isfile(p):
            saved = sorted(int(f[2:-2]) for f in os.listdir(plot_dir)
                           if f.startswith("g_") and f.endswith(".p")) \
                if os.path.isdir(plot_dir) else []
            raise UserError(f"no glimpse pickle {p}; epochs saved there: "
                            f"{', '.join(map(str, saved)) or 'none'}")
    try:
        with open(paths[0], "rb") as f:
            imgs = pickle.load(f)[0]
        with open(paths[1], "rb") as f:
            locs = np.stack(pickle.load(f), 1)  # (9, T, 2)
    except Exception as e:
        raise UserError(f"cannot read the pickles in {plot_dir} "
                        f"({type(e).__name__}: {e})") from None
    return np.asarray(imgs), locs


def sensor_settings(plot_dir, args):
    """(g, k, s) from the flags, else from the params.json training left beside the pickles."""
    params = {}
    path = os.path.join(plot_dir, "params.json")
    if os.path.isfile(path):
        with open(path) as f:
            params = json.load(f)
    names = ("patch_size", "num_patches", "glimpse_scale")
    given = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    missing = [k for k in names if k not in given and k not in params]
    if missing:
        raise UserError(f"{path} is missing: pass --{missing[0]} (and the other sensor flags)")
    sensor = ModelConfig.of(params, **given)  # the run's model, as training built it
    return sensor.patch_size, sensor.num_patches, sensor.glimpse_scale


def centre(l, H, W):
    """The retina's centre pixel (column, row) for l, with its float32 arithmetic."""
    l = np.asarray(l, np.float32)
    return int(0.5 * ((l[0] + 1.0) * W)), int(0.5 * ((l[1] + 1.0) * H))


def boxes(l, H, W, g, k, s):
    """[(left, top, size)] of the k patches at l, in pixel edges, as the retina cuts them."""
    cx, cy = centre(l, H, W)
    return [(cx - n // 2 - 0.5, cy - n // 2 - 0.5, n) for n in (g * s**i for i in range(k))]


def animate(imgs, locs, g, k, s, gif_path, png_path):
    if imgs.ndim == 4 and imgs.shape[1] == 1:  # grey (N, 1, H, W)
        imgs = imgs[:, 0]
    if imgs.ndim == 4:  # colour (N, C, H, W) in [0, 1] -> (N, H, W, C)
        imgs = imgs.transpose(0, 2, 3, 1).clip(0, 1)
    N, T = len(imgs), locs.shape[1]
    H, W = imgs.shape[1:3]
    zoom = max(1.0, max(H, W) / 56)  # canvases drawn at least as legibly as 56 px images
    fig, axes = plt.subplots(3, 3, figsize=(6 * zoom, 6.4 * zoom))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, img in zip(axes.flat, imgs):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_autoscale_on(False)  # boxes past the border must not widen the picture
    for ax in axes.flat[N:]:
        ax.axis("off")
    artists = []

    def frame(t):
        for a in artists:
            a.remove()
        artists.clear()
        for ax, path in zip(axes.flat, locs):
            centres = [centre(p, H, W) for p in path]
            if t > 0:  # the path of the earlier glimpses, faint
                xs, ys = zip(*centres[:t + 1])
                artists.extend(ax.plot(xs, ys, "o-", color=COLOUR, alpha=0.3, ms=2, lw=1))
            for i, (x, y, n) in enumerate(boxes(path[t], H, W, g, k, s)):
                # the smallest patch solid, each larger one lighter
                rect = Rectangle((x, y), n, n, fill=False, color=COLOUR, lw=1.5,
                                 alpha=1.0 / (1 + i), clip_on=True)
                artists.append(ax.add_patch(rect))
        artists.append(fig.suptitle(f"glimpse {t + 1}/{T}"))
        return artists

    anim = FuncAnimation(fig, frame, frames=T, blit=False)
    anim.save(gif_path, writer=PillowWriter(fps=1))
    frame(T - 1)
    fig.savefig(png_path, bbox_inches="tight", dpi=80)
    plt.close(fig)


def plot_images(images, labels, path):
    """Saves a 3x3 grid of images (9, C, H, W) with their labels as a PNG (headless)."""
    fig, axes = plt.subplots(3, 3, figsize=(5, 5))
    for ax, img, y in zip(axes.flat, images, labels):
        img = img.permute(1, 2, 0).squeeze(-1).cpu().numpy()
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_xlabel(str(int(y)))
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(images):]:
        ax.axis("off")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    parser = Parser(description="Animate the glimpses saved during training.")
    parser.add_argument("--plot_dir", required=True, help="folder with g_<epoch>.p, l_<epoch>.p")
    parser.add_argument("--epoch", type=int, required=True, help="epoch to plot (from 1)")
    parser.add_argument("--patch_size", type=int, help="override params.json")
    parser.add_argument("--num_patches", type=int, help="override params.json")
    parser.add_argument("--glimpse_scale", type=int, help="override params.json")
    args = parser.parse_args(argv)
    imgs, locs = load(args.plot_dir, args.epoch)
    g, k, s = sensor_settings(args.plot_dir, args)
    gif = os.path.join(args.plot_dir, f"epoch_{args.epoch}.gif")
    png = os.path.join(args.plot_dir, f"epoch_{args.epoch}.png")
    animate(imgs, locs, g, k, s, gif, png)
    print(f"[*] Saved {gif} and {png}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"plot_glimpses.py: error: {e}", file=sys.stderr)
        sys.exit(1)
