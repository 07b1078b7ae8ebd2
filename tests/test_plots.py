"""plot_glimpses.py on the pickles a real (tiny) training run leaves, run as a user runs it."""
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import ROOT, TINY, run_main

pytestmark = pytest.mark.slow  # subprocesses: main.py, torchrun, plot_glimpses.py


def plot(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "plot_glimpses.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_gif_from_training_pickles(workdir):
    out = run_main(workdir, "--epochs=2", "--plot_freq=1", "--num_glimpses=4",
                   "--num_patches=2", "--show_sample=True", *TINY).stdout
    (workdir / "train.log").write_text(out)
    sys.path.insert(0, os.path.join(ROOT, "plots"))
    import learning_curve
    epochs, accs = learning_curve.read(workdir / "train.log")
    assert epochs == [1, 2] and all(0 <= a <= 100 for a in accs)
    plot_dir = workdir / "plots" / "ram_4_8x8_2_k2"
    assert os.path.isfile(plot_dir / "sample.png")
    proc = plot(f"--plot_dir={plot_dir}", "--epoch=2")
    assert proc.returncode == 0, proc.stderr
    import plot_glimpses
    titles = plot_glimpses.load(plot_dir, 2)[2]  # each image's class and the prediction
    assert len(titles) == 9 and all(": said " in t for t, _ in titles)
    with Image.open(plot_dir / "epoch_2.gif") as gif:
        assert gif.n_frames == 4  # one frame per glimpse
    with Image.open(plot_dir / "epoch_2.png") as png:
        assert png.size[0] > 100


def test_missing_epoch_is_one_error_line(workdir):
    run_main(workdir, "--epochs=1", *TINY)
    proc = plot(f"--plot_dir={workdir / 'plots' / 'ram_6_8x8_2'}", "--epoch=7")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "g_7.p" in proc.stderr and "epochs saved there: 1" in proc.stderr


def test_colour_images_and_several_patches(tmp_path):
    """Colour pickles (9, C, H, W) and non-square images draw too, one frame per glimpse."""
    import numpy as np
    import plot_glimpses
    imgs = np.random.RandomState(0).randn(9, 3, 20, 30).astype(np.float32)
    locs = np.random.RandomState(1).uniform(-1, 1, (9, 5, 2)).astype(np.float32)
    gif, png = tmp_path / "c.gif", tmp_path / "c.png"
    plot_glimpses.animate(imgs, locs, 4, 3, 2, str(gif), str(png))
    with Image.open(gif) as g:
        assert g.n_frames == 5


def test_boxes_are_where_the_retina_cuts():
    """The drawn box covers exactly the pixels the retina reads (hand-checked: l = (0.5, -1)
    on a 4x4 image is column 3, row 0, so a 2x2 patch spans columns 2..3, rows -1..0)."""
    import plot_glimpses
    assert plot_glimpses.boxes((0.5, -1.0), 4, 4, 2, 2, 2) == [(1.5, -1.5, 2), (0.5, -2.5, 4)]


def test_every_run_keeps_its_history_exact_across_resume(workdir, tmp_path):
    """<name>_history.csv beside the checkpoints, by default: each epoch's row holds the
    figures the epoch's line printed; 1 epoch then --resume=True to 2 gives the rows of 2
    straight (all but the seconds); learning_curve.py draws it on axes that hold the curve."""
    import csv
    import re
    import matplotlib.pyplot as plt
    out = run_main(workdir, "--epochs=2", *TINY).stdout
    with open(workdir / "ckpt" / "ram_6_8x8_2_history.csv") as f:
        rows = list(csv.DictReader(f))
    printed = re.findall(r"train loss: ([\d.]+) - train acc: ([\d.]+) - val loss: ([\d.]+) - "
                         r"val acc: ([\d.]+)", out)
    lrs = re.findall(r"Epoch: \d+/2 - LR: ([\d.]+)", out)
    assert [r["epoch"] for r in rows] == ["1", "2"] and len(printed) == 2
    for row, figures, lr in zip(rows, printed, lrs):
        got = [float(row[k]) for k in ("train_loss", "train_acc", "valid_loss", "valid_acc")]
        assert [f"{v:.3f}" for v in got] == list(figures)
        assert f"{float(row['lr']):.6f}" == lr and float(row["seconds"]) > 0
    resumed = tmp_path / "resumed"
    run_main(workdir, "--epochs=1", f"--ckpt_dir={resumed}", *TINY)
    run_main(workdir, "--epochs=2", f"--ckpt_dir={resumed}", "--resume=True", *TINY)
    with open(resumed / "ram_6_8x8_2_history.csv") as f:
        again = list(csv.DictReader(f))
    for a, b in zip(rows, again):
        assert {k: v for k, v in a.items() if k != "seconds"} == \
            {k: v for k, v in b.items() if k != "seconds"}
    assert len(again) == 2
    sys.path.insert(0, os.path.join(ROOT, "plots"))
    import learning_curve
    learning_curve.main([str(workdir / "ckpt" / "ram_6_8x8_2_history.csv"),
                         f"--out={tmp_path / 'curve.png'}"])
    low, high = plt.gcf().axes[0].get_ylim()
    accs = [float(r["valid_acc"]) for r in rows]
    assert low <= min(accs) and max(accs) <= high and os.path.isfile(tmp_path / "curve.png")
