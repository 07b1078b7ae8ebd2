"""What the glimpse picture draws, read back from its figure: each step's box, numbered, the
path, the class and the prediction marked right or wrong, colours that stand out."""
import numpy as np
from matplotlib.colors import to_rgba

import plot_glimpses


def drawn(T=4, k=2, titles=None):
    imgs = np.random.RandomState(0).rand(9, 1, 28, 28).astype(np.float32)
    locs = np.random.RandomState(1).uniform(-0.5, 0.5, (9, T, 2)).astype(np.float32)
    fig, frame = plot_glimpses.figure(imgs, locs, 8, k, 2, titles)
    frame(T - 1)
    return fig, locs


def test_every_step_is_a_numbered_box_on_a_visible_path():
    T, k = 4, 2
    fig, locs = drawn(T, k)
    for ax, path in zip(fig.axes, locs):
        assert sorted(t.get_text() for t in ax.texts) == [str(u + 1) for u in range(T)]
        # the earlier steps' smallest boxes, and all k of the last one
        assert len(ax.patches) == (T - 1) + k
        smallest = [p for p in ax.patches if p.get_width() == 8]
        assert [(p.get_x(), p.get_y()) for p in smallest] == \
            [plot_glimpses.boxes(l, 28, 28, 8, k, 2)[0][:2] for l in path]
        line, = ax.lines
        assert len(line.get_xdata()) == T and line.get_linewidth() >= 1.5
        assert line.get_path_effects()  # the dark outline
        for artist in (line, *ax.patches):
            r, g, b, _ = to_rgba(artist.get_edgecolor() if ax.patches.count(artist)
                                 else artist.get_color())
            assert (r, g, b) != to_rgba("tab:red")[:3] and g > 0.5  # not the seed's red


def test_each_panel_says_the_class_and_the_prediction():
    titles = plot_glimpses.verdicts(["3", "7"] + ["1"] * 7, ["3", "1"] + ["1"] * 7)
    assert titles[0] == ("3: said 3 ✓", "tab:green") and titles[1] == ("7: said 1 ✗", "tab:red")
    fig, _ = drawn(titles=titles)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["3: said 3 ✓", "7: said 1 ✗"]
    assert to_rgba(fig.axes[1].title.get_color()) == to_rgba("tab:red")


def test_predict_titles_each_panel_with_its_file_class_and_probability(tmp_path, monkeypatch,
                                                                        capsys):
    """--predict's picture says, over each image, what its printed line says."""
    import os

    import torch
    from PIL import Image

    import main
    from conftest import ROOT, make_config
    rng = np.random.RandomState(2)
    for i in range(3):
        Image.fromarray(rng.randint(0, 255, (28, 28)).astype(np.uint8)).save(tmp_path / f"d{i}.png")
    drawn = {}
    monkeypatch.setattr(plot_glimpses, "animate", lambda *args: drawn.update(titles=args[-1]))
    c = make_config("--is_train=False", "--M=2", f"--predict={tmp_path}",
                    f"--ckpt_dir={os.path.join(ROOT, 'ckpt', 'shipped')}",
                    f"--plot_dir={tmp_path / 'pictures'}")
    with torch.random.fork_rng(devices=[]):  # main seeds before predict; l_0 is random
        torch.manual_seed(c.random_seed)
        main.predict(c, torch.device("cpu"), 1)
    lines = [ln.split("\t") for ln in capsys.readouterr().out.splitlines() if "\t" in ln]
    assert len(lines) == 3
    titles = [(t.split("\n")[0], t.split("\n")[1].split(" (")[0], float(t[-5:-1]), colour)
              for t, colour in drawn["titles"]]
    assert [t[:2] for t in titles] == [(os.path.basename(f), k) for f, k, _ in lines]
    assert all(colour == "black" for *_, colour in titles)
    # the title rounds to 2 decimals the probability the line prints to 4: within half a
    # last digit of each
    assert all(abs(t[2] - float(p)) <= 0.005 + 0.00005 + 1e-9
               for t, (*_, p) in zip(titles, lines))
