"""Validation accuracy by epoch, read from what main.py printed.

    python main.py | tee train.log
    python plots/learning_curve.py train.log [more.log ...] --out plots/learning_curve.png

Each log is one curve, labelled with its file name; a log of a resumed run continues the one
before it when given in order.
"""
import argparse
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

EPOCH = re.compile(r"^Epoch: (\d+)/")
VALID = re.compile(r"val acc: ([\d.]+)")


def read(path):
    epochs, accs, epoch = [], [], None
    with open(path) as f:
        for line in f:
            m = EPOCH.match(line)
            if m:
                epoch = int(m.group(1))
            m = VALID.search(line)
            if m and epoch is not None:
                epochs.append(epoch)
                accs.append(float(m.group(1)))
    return epochs, accs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("logs", nargs="+")
    parser.add_argument("--labels", nargs="*", help="one per log (default: the file names)")
    parser.add_argument("--out", default="plots/learning_curve.png")
    parser.add_argument("--ymin", type=float, default=97, help="lower end of the y axis")
    parser.add_argument("--error", action="store_true",
                        help="validation error on a log scale instead (tasks far apart)")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, path in enumerate(args.logs):
        epochs, accs = read(path)
        label = args.labels[i] if args.labels and i < len(args.labels) else path
        if args.error:
            ax.plot(epochs, [100 - a for a in accs], label=f"{label} (best {100 - max(accs):.2f}%)")
        else:
            ax.plot(epochs, accs, label=f"{label} (best {max(accs):.2f}%)")
    ax.set_xlabel("epoch")
    if args.error:
        ax.set_yscale("log")
        for axis_format in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_format(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_ylabel("validation error (%), M=10")
    else:
        ax.set_ylabel("validation accuracy (%), M=10")
        ax.set_ylim(args.ymin, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right" if args.error else "lower right", fontsize=8)
    fig.savefig(args.out, bbox_inches="tight", dpi=100)
    print(f"[*] Saved {args.out}")


if __name__ == "__main__":
    main()
