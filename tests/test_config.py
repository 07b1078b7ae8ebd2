"""The flags' checks, in process: each bad value is refused with its reason, before anything
runs (test_errors.py runs one of each kind through main.py, as a user would)."""
import os

import pytest

import config
from utils import UserError


@pytest.mark.parametrize("flags,words", [
    (["--patch_size=0"], ["--patch_size", "positive"]),
    (["--num_glimpses=-2"], ["--num_glimpses"]),
    (["--batch_size=0"], ["--batch_size"]),
    (["--M=0"], ["--M"]),
    (["--num_patches=-1"], ["--num_patches"]),
    (["--epochs=0"], ["--epochs"]),
    (["--glimpse_scale=0", "--num_patches=3"], ["--glimpse_scale", "at least 1"]),
    (["--std=0"], ["--std"]),
    (["--std=-0.1"], ["--std"]),
    (["--max_grad_norm=-1"], ["--max_grad_norm", "0 (off) or positive"]),
    (["--max_grad_norm=nan"], ["--max_grad_norm", "finite"]),
    (["--ema_decay=1"], ["--ema_decay", "[0, 1)"]),
    (["--ema_decay=nan"], ["--ema_decay", "[0, 1)"]),
    (["--lr_decay=0"], ["--lr_decay", "(0, 1]"]),
    (["--lr_decay=1.5"], ["--lr_decay", "(0, 1]"]),
    (["--lr_decay=nan"], ["--lr_decay", "finite"]),
    (["--valid_size=1"], ["--valid_size", "[0, 1)"]),
    (["--valid_size=-0.5"], ["--valid_size"]),
    (["--hidden_size=200"], ["--hidden_size", "--glimpse_hidden + --loc_hidden"]),
    (["--random_glimpses=True", "--model=fc"], ["--random_glimpses is RAM's",
                                                "--model=fc has no glimpses"]),
    (["--batch_size=ten"], ["--batch_size", "invalid int value"]),
    (["--std=wide"], ["--std", "invalid float value"]),
    (["--shuffle=yes"], ["--shuffle", "True, False, 1 or 0"]),
    (["--epoch=3"], ["unrecognized", "--epochs?"]),
    (["--momentum=0.9"], ["--momentum", "removed"]),
    (["--init_loc=corner"], ["--init_loc"]),
    (["--model=resnet"], ["--model", "invalid choice"]),
    (["--num_runs=0"], ["--num_runs", "positive"]),
    (["--num_runs=-3"], ["--num_runs", "positive"]),
    (["--num_threads=0"], ["--num_threads", "positive"]),
    (["--canvas_size=60"], ["--canvas_size applies only to --dataset=translated or cluttered"]),
    (["--dataset=catch", "--canvas_size=60", "--num_clutter=4"],
     ["--canvas_size, --num_clutter apply only to"]),
    (["--dataset=translated", "--num_clutter=3"], ["--num_clutter is for --dataset=cluttered"]),
    (["--num_runs=2", "--is_train=False", "--predict=x.png"], ["--predict", "one model",
                                                                "--ckpt_dir=<ckpt_dir>/seed<S>"]),
])
def test_a_bad_flag_is_refused_with_its_reason(capsys, flags, words):
    """argparse's refusals are one line and exit 2; the checks' are a UserError (main.py
    prints it as one line and exits 1)."""
    try:
        config.check(config.get_config(flags))
    except SystemExit as e:
        line = capsys.readouterr().err
        assert e.code == 2 and line.count("\n") == 1, line
    except UserError as e:
        line = str(e)
    else:
        raise AssertionError(f"{flags} was accepted")
    for w in words:
        assert w in line, (w, line)


def test_a_baseline_runs_once_per_image():
    """The baselines are deterministic: M is 1 for them whatever --M says; RAM keeps it."""
    c = config.get_config(["--model=convnet", "--M=10"])
    config.check(c)
    assert c.M == 1
    c = config.get_config(["--M=7"])
    config.check(c)
    assert c.M == 7


def test_num_runs_is_refused_under_torchrun(monkeypatch):
    """Its runs are processes of their own; torchrun's ranks would each start all of them."""
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="--num_runs .* not torchrun"):
        config.check(config.get_config(["--num_runs=2"]))
    config.check(config.get_config(["--num_runs=1"]))


def test_runs_in_two_folders_keep_their_own_pictures_and_logs():
    """The seed's layout for the seed's --ckpt_dir; any other run's pictures and logs go
    beside its checkpoints, so a second run with the same settings cannot overwrite them."""
    seed, a, b = (make(f"--ckpt_dir={d}") for d in ("./ckpt", "runs/a", "runs/b"))
    assert (seed.plot_dir, seed.logs_dir) == ("./plots/", "./logs/")
    assert (a.plot_dir, a.logs_dir) == (os.path.join("runs/a", "plots"),
                                        os.path.join("runs/a", "logs"))
    assert b.plot_dir != a.plot_dir and b.logs_dir != a.logs_dir
    assert make("--ckpt_dir=runs/a", "--plot_dir=mine").plot_dir == "mine"  # as given


def make(*flags):
    c = config.get_config(list(flags))
    config.check(c)
    return c
