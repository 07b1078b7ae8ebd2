"""Validation accuracy by epoch, read from a run's history or from what main.py printed.

    python plots/learning_curve.py ckpt/ram_6_8x8_2_history.csv --out curve.png
    python plots/learning_curve.py train.log [more.log ...]     # python main.py | tee train.log

Each file is one curve, labelled with its name. Every run keeps its history beside its
checkpoints (<ckpt_dir>/<name>_history.csv, a resumed run's included); a log of a resumed run
continues the one before it when given in order.
"""
import argparse
import csv
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

EPOCH = re.compile(r"^Epoch: (\d+)/")
VALID = re.compile(r"val acc: ([\d.]+)")


def read(path):
    """(epochs, validation accuracies) of a history csv or a printed log."""
    if str(path).endswith(".csv"):
        with open(path) as f:
            rows = [r for r in csv.DictReader(f) if r["valid_acc"]]
        return [int(r["epoch"]) for r in rows], [float(r["valid_acc"]) for r in rows]
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("logs", nargs="+")
    parser.add_argument("--labels", nargs="*", help="one per log (default: the file names)")
    parser.add_argument("--out", default="plots/learning_curve.png")
    parser.add_argument("--ymin", type=float, default=None,
                        help="lower end of the y axis (default: what the curves need)")
    parser.add_argument("--error", action="store_true",
                        help="validation error on a log scale instead (tasks far apart)")
    args = parser.parse_args(argv)
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
        ax.set_ylim(args.ymin, None)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right" if args.error else "lower right", fontsize=8)
    fig.savefig(args.out, bbox_inches="tight", dpi=100)
    print(f"[*] Saved {args.out}")


if __name__ == "__main__":
    main()
