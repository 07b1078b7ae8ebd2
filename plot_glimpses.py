"""Animate where RAM looked, and what it concluded: one GIF frame per glimpse on the 9 images
training pickled, each titled with its class and the model's prediction; for Catch, the 9
games frame by frame, with the action taken and whether the ball was caught.

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
from matplotlib.patheffects import withStroke  # noqa: E402
import numpy as np  # noqa: E402

from config import Parser  # noqa: E402
from model import ModelConfig  # noqa: E402
from utils import UserError  # noqa: E402

# bright, with a dark outline: seen on black, grey, white and colour images alike
COLOUR, OUTLINE = "#00e5ff", "black"
RIGHT, WRONG = "tab:green", "tab:red"
ARROWS = ("← left", "stay", "right →")  # a Catch action, by its index


def load(plot_dir, epoch):
    """(images, locations (9, T, 2), titles): titles [(text, colour)] from y_<epoch>.p (the
    true and the predicted class), or None for pickles from before it was written."""
    paths = [os.path.join(plot_dir, f"{kind}_{epoch}.p") for kind in ("g", "l")]
    for p in paths:
        if not os.path.isfile(p):
            saved = sorted(int(f[2:-2]) for f in os.listdir(plot_dir)
                           if f.startswith("g_") and f.endswith(".p")) \
                if os.path.isdir(plot_dir) else []
            raise UserError(f"no glimpse pickle {p}; epochs saved there: "
                            f"{', '.join(map(str, saved)) or 'none'}")
    labels = os.path.join(plot_dir, f"y_{epoch}.p")
    try:
        with open(paths[0], "rb") as f:
            imgs = pickle.load(f)[0]
        with open(paths[1], "rb") as f:
            locs = np.stack(pickle.load(f), 1)  # (9, T, 2)
        titles = None
        if os.path.isfile(labels):
            with open(labels, "rb") as f:
                titles = verdicts(*pickle.load(f))
        if np.asarray(imgs).ndim == 5 and titles:  # a game's screens (9, T, 1, S, S): its actions
            with open(labels, "rb") as f:
                titles = [(text, colour, actions) for (text, colour), actions in
                          zip(titles, pickle.load(f)[0])]
    except Exception as e:
        raise UserError(f"cannot read the pickles in {plot_dir} "
                        f"({type(e).__name__}: {e})") from None
    return np.asarray(imgs), locs, titles


def verdicts(classes, predicted):
    """[(title, colour)]: each image's class and what the model said, green if right; for a
    game, whether the ball was caught."""
    if predicted and predicted[0] in ("caught", "missed"):
        return [(p, RIGHT if p == "caught" else WRONG) for p in predicted]
    return [(f"{y}: said {p} " + ("✓" if y == p else "✗"), RIGHT if y == p else WRONG)
            for y, p in zip(classes, predicted)]


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


def figure(imgs, locs, g, k, s, titles=None):
    """(fig, frame): frame(t) draws glimpses 1..t+1 on each panel: every step's smallest box,
    numbered, the earlier ones faded, the current one's k boxes, and the path through their
    centres; titles: [(text, colour)] per panel. A game's imgs are its screens (N, T, H, W),
    one a glimpse, and its titles (text, colour, the actions taken)."""
    screens = None
    if imgs.ndim == 5 or (imgs.ndim == 4 and titles and len(titles[0]) == 3):
        screens = imgs[:, :, 0] if imgs.ndim == 5 else imgs
        imgs = screens[:, 0]
    elif imgs.ndim == 4 and imgs.shape[1] == 1:  # grey (N, 1, H, W)
        imgs = imgs[:, 0]
    if imgs.ndim == 4:  # colour (N, C, H, W) in [0, 1] -> (N, H, W, C)
        imgs = imgs.transpose(0, 2, 3, 1).clip(0, 1)
    N, T = len(imgs), locs.shape[1]
    H, W = imgs.shape[1:3]
    zoom = max(1.0, max(H, W) / 56)  # canvases drawn at least as legibly as 56 px images
    fig, axes = plt.subplots(3, 3, figsize=(6 * zoom, 6.8 * zoom))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    shown = []
    for i, (ax, img) in enumerate(zip(axes.flat, imgs)):
        shown.append(ax.imshow(img, cmap="gray" if img.ndim == 2 else None))
        ax.set_autoscale_on(False)  # boxes past the border must not widen the picture
        if titles:
            ax.set_title(titles[i][0], color=titles[i][1], fontsize=9)
    for ax in axes.flat[N:]:
        ax.axis("off")
    outline = [withStroke(linewidth=3, foreground=OUTLINE)]
    artists = []

    def frame(t):
        for a in artists:
            a.remove()
        artists.clear()
        if screens is not None:  # the game's frame t, and the action taken on it
            for i, (im, ax) in enumerate(zip(shown, axes.flat)):
                im.set_data(screens[i, t])
                ax.set_xlabel(f"action: {ARROWS[titles[i][2][t]]}" if titles else "")
        for ax, path in zip(axes.flat, locs):
            xs, ys = zip(*(centre(p, H, W) for p in path[:t + 1]))
            artists.extend(ax.plot(xs, ys, "-", color=COLOUR, lw=1.5, path_effects=outline))
            for u in range(t + 1):
                sizes = boxes(path[u], H, W, g, k, s)
                for i, (x, y, n) in enumerate(sizes if u == t else sizes[:1]):
                    # the smallest patch solid, each larger one lighter; earlier steps faded
                    alpha = (1.0 if u == t else 0.45) / (1 + i)
                    artists.append(ax.add_patch(Rectangle(
                        (x, y), n, n, fill=False, color=COLOUR, lw=1.5, alpha=alpha,
                        path_effects=outline, clip_on=True)))
                x, y, _ = sizes[0]
                artists.append(ax.text(x, y, str(u + 1), color=COLOUR, fontsize=7, va="bottom",
                                       alpha=1.0 if u == t else 0.6, path_effects=outline,
                                       clip_on=True))
        artists.append(fig.suptitle(f"{'frame' if screens is not None else 'glimpse'} "
                                    f"{t + 1}/{T}"))
        return artists

    return fig, frame


def animate(imgs, locs, g, k, s, gif_path, png_path, titles=None):
    """The GIF (a frame per glimpse) and the PNG of its last frame."""
    fig, frame = figure(imgs, locs, g, k, s, titles)
    anim = FuncAnimation(fig, frame, frames=locs.shape[1], blit=False)
    anim.save(gif_path, writer=PillowWriter(fps=1))
    frame(locs.shape[1] - 1)
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
    imgs, locs, titles = load(args.plot_dir, args.epoch)
    g, k, s = sensor_settings(args.plot_dir, args)
    gif = os.path.join(args.plot_dir, f"epoch_{args.epoch}.gif")
    png = os.path.join(args.plot_dir, f"epoch_{args.epoch}.png")
    animate(imgs, locs, g, k, s, gif, png, titles)
    print(f"[*] Saved {gif} and {png}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"plot_glimpses.py: error: {e}", file=sys.stderr)
        sys.exit(1)
