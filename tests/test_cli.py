"""main.py as a user runs it, in a subprocess, on tiny MNIST-format files; and the shipped
models' test lines on the real data."""
import os
import pickle
import random
import re
import statistics

import numpy as np
import pytest
import torch

import main
from conftest import ROOT, SHARED, TINY, run_main

pytestmark = pytest.mark.slow  # subprocesses: main.py, torchrun, plot_glimpses.py

NAME = "ram_6_8x8_2"
SHIPPED = os.path.join(ROOT, "ckpt", "shipped")


def test_train_resume_test(workdir, tmp_path):
    """1 epoch, then --resume=True to 2, then a test: what each prints and writes; the resumed
    run is the run of 2 epochs straight (assert_resumed_is_straight)."""
    out = run_main(workdir, "--epochs=1", *TINY).stdout
    assert "[*] Number of model parameters: 209,677" in out
    assert "Epoch: 1/1 - LR: 0.000300" in out
    assert re.search(r"train loss: [\d.]+ - train acc: [\d.]+ - val loss: [\d.]+ - val acc: "
                     r"[\d.]+ - val err: [\d.]+ \[\*\]", out)
    for f in (f"{NAME}_ckpt.pth.tar", f"{NAME}_model_best.pth.tar", f"{NAME}_params.json"):
        assert os.path.isfile(workdir / "ckpt" / f), f
    for f in ("g_1.p", "l_1.p"):
        assert os.path.isfile(workdir / "plots" / NAME / f), f
    ckpt = torch.load(workdir / "ckpt" / f"{NAME}_ckpt.pth.tar", weights_only=True)
    assert ckpt["epoch"] == 1 and {"model_state", "optim_state", "best_valid_acc"} <= set(ckpt)

    out = run_main(workdir, "--resume=True", "--epochs=2", *TINY).stdout
    assert "Epoch: 1/2" not in out and "Epoch: 2/2" in out
    assert f"[*] Loaded {NAME}_ckpt.pth.tar checkpoint @ epoch 1" in out

    out = run_main(workdir, "--is_train=False", *TINY).stdout
    assert re.search(r"\[\*\] Test Acc: \d+/40 \(\d+\.\d\d%\)", out)
    straight = tmp_path / "straight"
    run_main(workdir, "--epochs=2", f"--ckpt_dir={straight}", *TINY)
    assert_resumed_is_straight(straight, workdir / "ckpt", ())


def sha1s(folder):
    import hashlib
    return {f: hashlib.sha1((folder / f).read_bytes()).hexdigest() for f in os.listdir(folder)}


def test_a_fresh_run_never_overwrites_another(workdir):
    run_main(workdir, "--epochs=1", *TINY)
    before = sha1s(workdir / "ckpt")
    proc = run_main(workdir, "--epochs=1", *TINY, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and f"{NAME}_ckpt.pth.tar holds an earlier run (epoch 1, best " \
        "valid acc" in line
    for way in ("--resume=True", "--ckpt_dir=DIR", "--overwrite=True"):
        assert way in line
    assert sha1s(workdir / "ckpt") == before and "Epoch" not in proc.stdout
    (workdir / "plots" / NAME / "g_9.p").write_bytes(b"an older run's")
    out = run_main(workdir, "--epochs=1", "--overwrite=True", *TINY).stdout
    assert "Epoch: 1/1" in out and sha1s(workdir / "ckpt") != before
    assert sorted(os.listdir(workdir / "plots" / NAME)) == ["g_1.p", "l_1.p", "params.json",
                                                            "y_1.p"]


@pytest.mark.parametrize("flags,name", [
    (["--dataset=translated", "--canvas_size=40", "--core=lstm"],
     "ram_4_12x12_2_k2_lstm_translated40"),
    (["--dataset=cluttered", "--canvas_size=40", "--clutter_size=6"],
     "ram_4_12x12_2_k2_cluttered40_c6"),
])
def test_the_paper_tasks_train_and_test(workdir, flags, name):
    sensor = ["--patch_size=12", "--num_patches=2", "--num_glimpses=4"]
    out = run_main(workdir, "--epochs=1", *sensor, *flags, *TINY).stdout
    assert "val acc" in out
    ckpt = torch.load(workdir / "ckpt" / f"{name}_model_best.pth.tar", weights_only=True)
    dataset = flags[0].split("=")[1]
    assert ckpt["data"] == {"dataset": dataset, "canvas_size": 40, "clutter_size": 8 if
                            dataset == "translated" else 6, "image_size": None,
                            "screen_size": None, "num_clutter": 0 if dataset == "translated"
                            else 4,
                            "normalisation": [0.0, 1.0], "image_shape": [1, 40, 40],
                            "classes": [str(i) for i in range(10)]}
    assert ckpt["model_args"]["patch_size"] == 12 and ckpt["model_args"]["num_patches"] == 2
    assert ckpt["params"]["dataset"] == flags[0].split("=")[1]
    assert ("rnn.cell.weight_hh" in ckpt["model_state"]) == ("--core=lstm" in flags)
    with open(workdir / "plots" / name / "g_1.p", "rb") as f:
        assert pickle.load(f)[0].shape == (9, 40, 40)
    out = run_main(workdir, "--is_train=False", *sensor, *flags, *TINY).stdout
    assert re.search(r"Test Acc: \d+/40 ", out)
    # the same model asked for with other data flags: the flags that select it are named
    proc = run_main(workdir, "--is_train=False", *sensor, "--dataset=cluttered",
                    "--canvas_size=100", *TINY, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"holds {name} (" in proc.stderr and "--canvas_size=40" in proc.stderr


def test_resume_is_exact_with_an_average_and_a_schedule(workdir, tmp_path):
    """As test_train_resume_test's, with --ema_decay (the same average, the model_state,
    beside the weights trained) and --lr_decay (the same schedule)."""
    flags = ("--ema_decay=0.9", "--lr_decay=0.5")
    straight = tmp_path / "straight"
    run_main(workdir, "--epochs=2", f"--ckpt_dir={straight}", *TINY, *flags)
    run_main(workdir, "--epochs=1", *TINY, *flags)
    run_main(workdir, "--epochs=2", "--resume=True", *TINY, *flags)
    assert_resumed_is_straight(straight, workdir / "ckpt", flags)


def assert_resumed_is_straight(straight, resumed, flags):
    """1 epoch, then --resume=True to 2 (in resumed), gives the same weights bit for bit as 2
    epochs (in straight), and the same optimizer, patience counter, best and schedule."""
    a = torch.load(straight / f"{NAME}_ckpt.pth.tar", weights_only=True)
    b = torch.load(resumed / f"{NAME}_ckpt.pth.tar", weights_only=True)
    ema = any("ema" in f for f in flags)
    states = ("model_state", "train_state") if ema else ("model_state",)
    assert a.get("ema_steps") == b.get("ema_steps") == (12 if ema else None)  # 2 x 6 batches
    for state in states:
        for k, v in a[state].items():
            assert torch.equal(v, b[state][k]), (state, k)
    assert a["optim_state"]["state"][0]["step"] == b["optim_state"]["state"][0]["step"]
    assert a["counter"] == b["counter"] and a["best_valid_acc"] == b["best_valid_acc"]
    assert a["scheduler_state"] == b["scheduler_state"]
    assert a["optim_state"]["param_groups"][0]["lr"] == (7.5e-5 if "--lr_decay=0.5" in flags
                                                         else 3e-4)


def test_init_from_starts_a_new_run_from_trained_weights(workdir, tmp_path):
    """--init_from: epoch 1 of a new run, from the file's weights (at a learning rate too small
    to move them), with a new optimizer and a best of its own, on other data if need be; the
    run then resumes like any other."""
    run_main(workdir, "--epochs=1", *TINY)
    source = workdir / "ckpt" / f"{NAME}_model_best.pth.tar"
    a = torch.load(source, weights_only=True)
    torch.save(dict(a, best_valid_acc=100.0, epoch=7), source)  # no new run can beat 100%
    other = ["--dataset=translated", "--canvas_size=40"]  # the same sensor on other canvases
    new = tmp_path / "new"
    flags = [f"--init_from={source}", f"--ckpt_dir={new}", "--init_lr=1e-12", *other, *TINY]
    out = run_main(workdir, "--epochs=1", *flags).stdout
    assert "Epoch: 1/1 - LR: 0.000000" in out and f"Loading model from {source}" in out
    name = f"{NAME}_translated40"
    b = torch.load(new / f"{name}_model_best.pth.tar", weights_only=True)
    assert b["epoch"] == 1 and b["best_valid_acc"] < 100
    assert b["optim_state"]["state"][0]["step"] == 6  # 100 images, 16 a batch: a new Adam
    for k, v in a["model_state"].items():
        assert torch.allclose(v, b["model_state"][k], atol=1e-8), k
    out = run_main(workdir, "--epochs=2", "--resume=True", *flags).stdout  # its own flags again
    assert "Epoch: 2/2" in out and f"Loaded {name}_ckpt.pth.tar checkpoint @ epoch 1" in out


def test_batch_size_one_and_other_glimpse_settings(workdir):
    out = run_main(workdir, "--epochs=1", "--batch_size=1", "--M=1", "--print_freq=50",
                   "--valid_size=0").stdout
    assert "validate on 0 samples" in out and "Epoch: 1/1" in out
    # the training figures stand in for validation, and are not printed as validation's
    assert "val acc" not in out and "(no validation set: the best epoch is the best " \
        "training accuracy)" in out
    out = run_main(workdir, "--epochs=1", "--patch_size=5", "--num_patches=3",
                   "--glimpse_scale=3", "--num_glimpses=3", "--init_loc=center", *TINY).stdout
    assert "Epoch: 1/1" in out
    assert os.path.isfile(workdir / "ckpt" / "ram_3_5x5_3_k3_model_best.pth.tar")


def test_glimpse_pickles(workdir):
    run_main(workdir, "--epochs=1", "--init_loc=center", "--autograd=True", *TINY)
    with open(workdir / "plots" / NAME / "g_1.p", "rb") as f:
        imgs = pickle.load(f)
    with open(workdir / "plots" / NAME / "l_1.p", "rb") as f:
        locs = pickle.load(f)
    assert len(imgs) == 1 and imgs[0].shape == (9, 28, 28)
    assert len(locs) == 6 and all(l.shape == (9, 2) for l in locs)
    assert (locs[0] == 0).all()  # the first glimpse is at the starting location
    assert all(abs(l).max() <= 1 for l in locs)


def test_tensorboard_scalars(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_main(workdir, "--epochs=2", "--use_tensorboard=True", *TINY)
    logdir = workdir / "logs" / NAME
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train_loss", "train_acc", "valid_loss", "valid_acc"} <= tags
    # one step axis, training images seen: 90 a tiny epoch
    assert [e.step for e in acc.Scalars("valid_acc")] == [90, 180]
    train_steps = [e.step for e in acc.Scalars("train_acc")]
    assert train_steps == sorted(train_steps) and train_steps[-1] == 180
    assert 90 in train_steps and all(0 <= e.value <= 100 for e in acc.Scalars("train_acc"))


def test_no_plot_folder_without_pickles(workdir):
    run_main(workdir, "--epochs=1", "--plot_freq=0", *TINY)
    assert not (workdir / "plots").exists()


def test_seed_checkpoint_on_real_mnist(real_mnist, tmp_path, monkeypatch, capsys):
    """The seed's published checkpoint (beside the project, in ../shared/reference, where the
    project's CI has it) tests as the README says, 9853/10000 at M=10."""
    ref = os.path.join(SHARED, "reference", f"{NAME}_model_best.pth.tar")
    if not os.path.isfile(ref):
        pytest.skip("the seed's published checkpoint (ram_6_8x8_2_model_best.pth.tar, from its "
                    "repository) is not in ../shared/reference beside the project")
    ckpt_dir = tmp_path / "seedckpt"
    ckpt_dir.mkdir()
    os.symlink(ref, ckpt_dir / f"{NAME}_model_best.pth.tar")
    out = main_in_process(real_mnist, tmp_path, monkeypatch, capsys, "--is_train=False",
                          f"--ckpt_dir={ckpt_dir}")
    correct = int(re.search(r"Test Acc: (\d+)/10000", out).group(1))
    assert abs(correct - 9853) <= 5, out


RECORD = "".join(open(os.path.join(ROOT, f)).read() for f in ("README.md", "RESULTS.md"))
# each shipped model's line; a seed of an error bar still alone has one too (seeds/<row>/seed<S>)
SHIPPED_MODELS = sorted(set(re.findall(
    r"python main\.py --is_train=False --ckpt_dir=ckpt/shipped(/seeds/\w+/seed\d+)?( [^\n]*)?"
    r"\n# \[\*\] Test (?:Acc|Catch rate): (\d+)/10000", RECORD)))
# the error bars: every seed of one recipe, tested by one --num_runs line
SHIPPED_SEEDS = sorted(set(re.findall(
    r"python main\.py --is_train=False --ckpt_dir=ckpt/shipped/seeds/(\w+)( [^\n]*)\n"
    r"# \[\*\] Test error over \d+ runs: ([\d.]+)% ± ([\d.]+) \(mean ± sd; ([\d., ]+)\)",
    RECORD)))


def main_in_process(real_mnist, tmp_path, monkeypatch, capsys, *flags):
    """What main.py prints for these flags, run in this process as main.py runs: its flags
    parsed and checked, then main (a Python and torch start saved for each line; the other
    tests run the process). Its threads and random streams are the test's again after."""
    data = [] if "--dataset=catch" in flags else [f"--data_dir={real_mnist}"]
    monkeypatch.chdir(tmp_path)
    config = main.get_config([*flags, *data, "--num_threads=1", "--use_gpu=False"])
    threads, state = torch.get_num_threads(), random.getstate()
    try:  # main seeds torch and random: the tests after this one keep their own streams
        with torch.random.fork_rng(devices=[]):
            main.check(config)
            main.main(config)
    finally:
        torch.set_num_threads(threads)
        random.setstate(state)
    return capsys.readouterr().out


@pytest.mark.parametrize("seed, flags, readme", SHIPPED_MODELS)
def test_shipped_models_test_as_the_readme_says(real_mnist, tmp_path, monkeypatch, capsys,
                                                seed, flags, readme):
    """Each README command that tests a shipped model, on the real MNIST (Catch on its own test
    games): the count it prints, up to 5 of 10,000 (another CPU's float rounding may flip a
    near tie)."""
    out = main_in_process(real_mnist, tmp_path, monkeypatch, capsys, "--is_train=False",
                          f"--ckpt_dir={SHIPPED}{seed}", *flags.split())
    correct = int(re.search(r"Test (?:Acc|Catch rate): (\d+)/10000", out).group(1))
    assert abs(correct - int(readme)) <= 5, out


@pytest.mark.parametrize("folder, flags, mean, sd, errors", SHIPPED_SEEDS)
def test_shipped_seeds_test_as_the_record_says(real_mnist, tmp_path, monkeypatch, capsys,
                                               folder, flags, mean, sd, errors):
    """Each error bar's line: every seed's test error as the record gives it (to 2 decimals,
    so up to 5 images of 10,000 as above), then their mean and sd over the counts printed;
    the record's mean and sd are those of its own errors."""
    said = [float(e) for e in errors.split(", ")]  # rounded to 2 decimals, as printed
    assert abs(statistics.mean(said) - float(mean)) <= 0.005 + 1e-9
    assert abs(statistics.stdev(said) - float(sd)) <= 0.005 + 1e-9
    out = main_in_process(real_mnist, tmp_path, monkeypatch, capsys, "--is_train=False",
                          f"--ckpt_dir={os.path.join(SHIPPED, 'seeds', folder)}", *flags.split())
    correct = [int(c) for c in re.findall(r"Test Acc: (\d+)/10000", out)]
    assert len(correct) == len(said) == int(re.search(r"--num_runs=(\d+)", flags).group(1))
    assert all(abs(c - (10000 - round(100 * e))) <= 5 for c, e in zip(correct, said)), out
    e = [100 * (1 - c / 10000) for c in correct]
    assert f"Test error over {len(e)} runs: {statistics.mean(e):.2f}% ± " \
        f"{statistics.stdev(e):.2f} (mean ± sd; {', '.join(f'{x:.2f}' for x in e)})" in out, out


def test_testing_a_folder_of_one_canvas_run_uses_its_canvas(workdir, tmp_path):
    """A folder holding only the 100x100 cluttered run, tested with --dataset=cluttered: the
    run announced lends its canvas (100, 8 pieces) to the test set too, which was built at
    the default 60 first and refused."""
    import shutil
    folder = tmp_path / "only100"
    folder.mkdir()
    for suffix in ("_model_best.pth.tar", "_params.json"):
        name = "ram_8_12x12_2_k4_lstm_cluttered100" + suffix
        shutil.copy(os.path.join(SHIPPED, name), folder / name)
    out = run_main(workdir, "--is_train=False", f"--ckpt_dir={folder}", "--dataset=cluttered",
                   *TINY).stdout
    assert "[*] Using ram_8_12x12_2_k4_lstm_cluttered100, the run in" in out
    assert re.search(r"\[\*\] Test Acc: \d+/40 \(", out), out


def test_a_checkpoint_file_is_enough_to_test_and_predict(workdir, tmp_path):
    """A shipped model copied alone and renamed: its path as --ckpt_dir tests it with the
    settings it holds (the 100x100 canvas too) and classifies an image; the folder alone names
    the file there and how to use it."""
    import shutil
    from PIL import Image
    lone = tmp_path / "lone"
    lone.mkdir()
    digits = lone / "digits.pth.tar"
    shutil.copy(os.path.join(SHIPPED, "ram_6_8x8_2_model_best.pth.tar"), digits)
    out = run_main(workdir, "--is_train=False", f"--ckpt_dir={digits}", *TINY).stdout
    assert f"[*] Using {digits}, with the settings it was trained with" in out
    assert re.search(r"\[\*\] Test Acc: \d+/40 \(", out), out
    canvas = lone / "canvas.pth.tar"
    shutil.copy(os.path.join(SHIPPED, "ram_8_12x12_2_k4_lstm_cluttered100_model_best.pth.tar"),
                canvas)
    out = run_main(workdir, "--is_train=False", f"--ckpt_dir={canvas}", *TINY).stdout
    assert "Images of 1 channel, 100x100" in out and re.search(r"Test Acc: \d+/40 \(", out)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "blank.png")
    proc = run_main(workdir, "--is_train=False", f"--ckpt_dir={digits}",
                    f"--predict={tmp_path / 'blank.png'}", "--M=2")
    assert re.search(r"blank.png\t\d\t[\d.]+", proc.stdout)
    assert os.path.isfile(workdir / "plots" / "ram_6_8x8_2" / "predict.gif")
    assert sorted(os.listdir(lone)) == ["canvas.pth.tar", "digits.pth.tar"]  # nothing added
    # a picture that cannot be written is one line; the predictions stand, exit 0
    (workdir / "blocked").write_text("a file where the picture's folder would be")
    proc = run_main(workdir, "--is_train=False", f"--ckpt_dir={digits}", "--M=2",
                    f"--predict={tmp_path / 'blank.png'}", f"--plot_dir={workdir / 'blocked'}")
    assert re.search(r"blank.png\t\d\t[\d.]+", proc.stdout)
    assert proc.stderr.count("\n") == 1 and "the glimpses were not drawn" in proc.stderr
    proc = run_main(workdir, "--is_train=False", f"--ckpt_dir={lone}", *TINY, check=False)
    assert proc.returncode == 1 and "canvas.pth.tar, digits.pth.tar: pass --ckpt_dir=" \
        f"{canvas} to use that file" in proc.stderr, proc.stderr
    proc = run_main(workdir, f"--ckpt_dir={digits}", *TINY, check=False)
    assert proc.returncode == 1 and "is a file: training writes to a folder" in proc.stderr


def test_the_record_gives_every_shipped_model():
    shipped = {f for f in os.listdir(SHIPPED) if f.endswith("_model_best.pth.tar")}
    assert len([s for s, *_ in SHIPPED_MODELS if not s]) == len(shipped) == 30
    seeds = os.path.join(SHIPPED, "seeds")
    folders = sorted(os.listdir(seeds)) if os.path.isdir(seeds) else []
    # a row's seeds: one --num_runs line for them all, or, while it has one, that seed's line
    alone = [s.split("/")[2:] for s, *_ in SHIPPED_MODELS if s]  # [row, seed<S>]
    assert sorted([f for f, *_ in SHIPPED_SEEDS] + [row for row, _ in alone]) == folders
    # a --num_runs line tests every seed its row ships, seed1 up, and no more
    for row, flags, *_ in SHIPPED_SEEDS:
        n = int(re.search(r"--num_runs=(\d+)", flags).group(1))
        assert sorted(os.listdir(os.path.join(seeds, row))) == [f"seed{s}" for s in range(1, n + 1)]
    assert all(os.listdir(os.path.join(seeds, row)) == [seed] for row, seed in alone)


def test_an_edited_forward_stops_before_training_or_trains_with_autograd(workdir, tmp_path):
    """The researcher's one-line edit (relu_ -> tanh_ on the last line of GlimpseNetwork's
    per_step) in a copy of the project: python main.py stops with one line naming the network
    and the way on, before anything is written; with --autograd=True the edited model trains."""
    import shutil
    import subprocess
    import sys
    copy = tmp_path / "project"
    copy.mkdir()
    for f in os.listdir(ROOT):
        if f.endswith(".py"):
            shutil.copy(os.path.join(ROOT, f), copy / f)
    line = "return torch.addmm(b34, what, W3).addmm_(where, W4).relu_()"
    text = (copy / "modules.py").read_text()
    assert text.count(line) == 1
    (copy / "modules.py").write_text(text.replace(line, line.replace("relu_", "tanh_")))

    def main(*args):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        return subprocess.run([sys.executable, str(copy / "main.py"), "--epochs=1", *args, *TINY],
                              cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    proc = main()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
        "main.py: error: GlimpseNetwork's forward no longer matches its written-out derivative")
    assert "--autograd=True" in proc.stderr and "Epoch" not in proc.stdout
    assert not (workdir / "ckpt").exists() and not (workdir / "plots").exists()
    proc = main("--autograd=True")
    assert proc.returncode == 0 and "Epoch: 1/1" in proc.stdout, proc.stderr


@pytest.mark.parametrize("model,name,params", [("fc", "fc256_translated40", 478_218),
                                               ("convnet", "convnet_translated40", 103_986)])
def test_a_baseline_trains_and_tests_by_the_same_command(workdir, model, name, params):
    flags = [f"--model={model}", "--dataset=translated", "--canvas_size=40", *TINY]
    out = run_main(workdir, "--epochs=1", *flags).stdout
    assert f"[*] Number of model parameters: {params:,}" in out and "val acc" in out
    ckpt = torch.load(workdir / "ckpt" / f"{name}_model_best.pth.tar", weights_only=True)
    assert ckpt["model_args"]["model"] == model and ckpt["params"]["M"] == 1
    assert not (workdir / "plots").exists()  # no glimpses to keep
    assert re.search(r"Test Acc: \d+/40 ", run_main(workdir, "--is_train=False", *flags).stdout)


def test_random_glimpses_train_and_keep_their_name(workdir):
    run_main(workdir, "--epochs=1", "--random_glimpses=True", "--num_glimpses=3", *TINY)
    with open(workdir / "plots" / "ram_3_8x8_2_random" / "l_1.p", "rb") as f:
        locs = pickle.load(f)
    assert len(locs) == 3 and all(abs(l).max() < 1 for l in locs)
