"""Reliability: a mistake is one line on stderr and a non-zero exit, never a traceback, and
nothing already saved is touched; checkpoints survive kill -9 and Ctrl-C."""
import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import contextlib

import pytest
import torch

import utils
from conftest import ROOT, TINY, run_main

NAME = "ram_6_8x8_2"
PROGRESS = re.compile(r"\d+/\d+ \[")


def snapshot(folder):
    """{file name: sha1} of everything in folder (hidden files too)."""
    if not os.path.isdir(folder):
        return None
    return {f: hashlib.sha1(open(os.path.join(folder, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(folder))}


def assert_user_error(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.replace("\r", "\n").splitlines()
             if l.strip() and not PROGRESS.search(l)]  # tqdm redraws its bar in place
    assert len(lines) == 1 and lines[0].startswith("main.py: error:"), proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_compile_without_a_cpp_compiler_is_one_line(workdir):
    """--compile=True on CPU with no C++ compiler to be found: one line, before any work."""
    env = dict(os.environ, PATH="", CXX="")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--compile=True",
                           "--epochs=1", *TINY], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=120)
    assert_user_error(proc, "--compile=True", "C++ compiler")
    assert not (workdir / "ckpt").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with tiny MNIST and one trained epoch in ckpt/."""
    from conftest import make_mnist
    d = tmp_path_factory.mktemp("trained")
    make_mnist(str(d / "data"))
    run_main(d, "--epochs=1", *TINY)
    return d


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
    (["--valid_size=1"], ["--valid_size", "[0, 1)"]),
    (["--valid_size=-0.5"], ["--valid_size"]),
    (["--hidden_size=200"], ["--hidden_size", "--glimpse_hidden + --loc_hidden"]),
    (["--batch_size=ten"], ["--batch_size", "invalid int value"]),
    (["--std=wide"], ["--std", "invalid float value"]),
    (["--shuffle=yes"], ["--shuffle", "True, False, 1 or 0"]),
    (["--epoch=3"], ["unrecognized", "--epochs?"]),
    (["--momentum=0.9"], ["--momentum", "removed"]),
    (["--init_loc=corner"], ["--init_loc"]),
])
def test_bad_flags(trained, flags, words):
    before = snapshot(trained / "ckpt")
    assert_user_error(run_main(trained, *TINY, *flags, check=False), *words)
    assert snapshot(trained / "ckpt") == before


def test_missing_checkpoints(workdir):
    proc = run_main(workdir, "--is_train=False", check=False)
    assert_user_error(proc, os.path.join(".", "ckpt", f"{NAME}_model_best.pth.tar"))
    proc = run_main(workdir, "--resume=True", *TINY, check=False)
    assert_user_error(proc, f"{NAME}_ckpt.pth.tar", "train first")


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_broken_checkpoint(trained, tmp_path, damage):
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    good = (trained / "ckpt" / f"{NAME}_model_best.pth.tar").read_bytes()
    data = {"random": os.urandom(5000), "truncated": good[:len(good) // 2], "empty": b""}
    (ckpt_dir / f"{NAME}_model_best.pth.tar").write_bytes(data[damage])
    before = snapshot(ckpt_dir)
    proc = run_main(trained, "--is_train=False", f"--ckpt_dir={ckpt_dir}", *TINY, check=False)
    assert_user_error(proc, "not a readable checkpoint")
    assert snapshot(ckpt_dir) == before


def test_checkpoint_of_another_configuration(workdir, tmp_path):
    """Settings differ in the model's name, so a renamed checkpoint is how one is given the
    wrong flags: the settings it was trained with are named."""
    run_main(workdir, "--epochs=1", "--num_patches=2", *TINY)
    for suffix in ("_ckpt.pth.tar", "_model_best.pth.tar"):
        os.rename(workdir / "ckpt" / f"{NAME}_k2{suffix}", workdir / "ckpt" / f"{NAME}{suffix}")
    before = snapshot(workdir / "ckpt")
    for flags in (["--is_train=False"], ["--resume=True", "--epochs=3"]):
        proc = run_main(workdir, *flags, *TINY, check=False)
        assert_user_error(proc, "--num_patches=2 (given 1)")
    assert snapshot(workdir / "ckpt") == before
    # a seed-style checkpoint: no params in it, no json beside it -> named by tensor shapes
    ckpt = torch.load(workdir / "ckpt" / f"{NAME}_model_best.pth.tar", weights_only=True)
    seed_dir = tmp_path / "seedlike"
    seed_dir.mkdir()
    torch.save({k: ckpt[k] for k in ("epoch", "model_state", "optim_state", "best_valid_acc")},
               seed_dir / f"{NAME}_model_best.pth.tar")
    proc = run_main(workdir, "--is_train=False", f"--ckpt_dir={seed_dir}", *TINY, check=False)
    assert_user_error(proc, "sensor.fc1.weight (128, 128) vs (128, 64)")


def test_patch_larger_than_the_image_is_allowed(workdir):
    out = run_main(workdir, "--epochs=1", "--patch_size=40", "--num_patches=2", *TINY).stdout
    assert "val acc" in out


@pytest.mark.parametrize("damage", ["missing", "truncated", "corrupt_gz"])
def test_bad_mnist(workdir, damage):
    raw = workdir / "data" / "MNIST" / "raw"
    images = raw / "train-images-idx3-ubyte"
    if damage == "missing":
        images.unlink()
        words = ["train-images-idx3-ubyte.gz", str(raw)]
    elif damage == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
        words = ["train-images-idx3-ubyte", "truncated or corrupt"]
    else:
        images.unlink()
        (raw / "train-images-idx3-ubyte.gz").write_bytes(os.urandom(3000))
        words = ["train-images-idx3-ubyte.gz", "truncated or corrupt"]
    assert_user_error(run_main(workdir, "--epochs=1", *TINY, check=False), *words)
    assert not os.path.exists(workdir / "ckpt")  # checked before any folder was made


@pytest.mark.parametrize("flag", ["--ckpt_dir", "--logs_dir"])
def test_unwritable_folders(workdir, flag):
    (workdir / "a_file").write_text("not a folder")
    proc = run_main(workdir, "--epochs=1", f"{flag}=a_file/sub", "--use_tensorboard=True",
                    *TINY, check=False)
    assert_user_error(proc, "cannot write to folder", "a_file/sub")
    assert "Epoch" not in proc.stdout  # refused before any training


def test_nan_loss_stops_without_writing_a_checkpoint(workdir):
    proc = run_main(workdir, "--epochs=2", "--init_lr=1e30", *TINY, check=False)
    assert_user_error(proc, "loss became nan in epoch 1, batch", "no checkpoint was written")
    assert not [f for f in os.listdir(workdir / "ckpt") if f.endswith(".tar")]


def test_nan_loss_keeps_the_last_good_checkpoint(workdir, monkeypatch):
    """In-process: a good epoch, then weights poisoned with NaN; the saved epoch stays."""
    import config
    import data_loader
    from trainer import Diverged, Trainer
    monkeypatch.chdir(workdir)
    cfg = config.get_config(["--epochs=2", "--plot_freq=0", *TINY])
    utils.prepare_dirs(cfg.ckpt_dir)
    train, valid = data_loader.get_train_valid_loader(cfg, "cpu")
    trainer = Trainer(cfg, torch.device("cpu"), train, valid)
    trainer.train_one_epoch(0)
    trainer.save_checkpoint(1, is_best=True)
    before = snapshot(workdir / "ckpt")
    with torch.no_grad():
        trainer.model.rnn.h2h.weight.fill_(float("nan"))
    with pytest.raises(Diverged, match="epoch 2, batch 1; training stopped and epoch 1 is kept"):
        trainer.train_one_epoch(1)
    assert snapshot(workdir / "ckpt") == before


def start_training(cwd, *args):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    # Ctrl-C as a terminal delivers it: a test run started in the background (cmd &) inherits
    # SIGINT ignored, and main.py rightly keeps an ignored SIGINT ignored
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path, proc, timeout=120):
    end = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_stops_cleanly(workdir, sig, code):
    proc = start_training(workdir, "--epochs=1000", *TINY)
    wait_for(workdir / "ckpt" / f"{NAME}_ckpt.pth.tar", proc)
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, out[-1500:] + err[-1500:]
    assert "Traceback" not in err
    last = [l for l in err.replace("\r", "\n").splitlines() if l.strip()][-1]
    assert "safely saved" in last, err
    # the command that continues this run, its own flags included
    assert last.endswith(f"resume with python main.py --epochs=1000 {' '.join(TINY)} "
                         "--resume=True"), last
    epoch = int(last.split("epoch ")[1].split()[0])
    ckpt = torch.load(workdir / "ckpt" / f"{NAME}_ckpt.pth.tar", weights_only=True)
    assert ckpt["epoch"] == epoch


def test_kill_9_never_leaves_a_broken_checkpoint(workdir):
    """kill -9 at many moments of training; the checkpoint always loads, whole."""
    path = workdir / "ckpt" / f"{NAME}_ckpt.pth.tar"
    epochs = []
    for delay in (0.0, 0.05, 0.11, 0.17, 0.23, 0.31):
        proc = start_training(workdir, "--epochs=1000", "--resume=True" if epochs else
                              "--resume=False", *TINY)
        wait_for(path, proc)
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        ckpt = torch.load(path, weights_only=True)  # raises if half-written
        assert set(ckpt["model_state"]) and ckpt["epoch"] >= 1
        epochs.append(ckpt["epoch"])
    assert epochs == sorted(epochs)


@contextlib.contextmanager
def raising_keyboard_interrupt(sig):
    """sig raises KeyboardInterrupt here, as main.py makes it (whatever the test runner
    inherited: run in the background, SIGINT comes ignored)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        signal.signal(sig, previous)


class SignalsMidWrite:
    """A file that sends this process `sig` in the middle of the writes it is given."""

    def __init__(self, f, sig):
        self.f, self.sig, self.calls = f, sig, 0

    def write(self, data):
        self.calls += 1
        if self.calls == 3:
            signal.raise_signal(self.sig)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_inside_torch_save_waits_for_it(tmp_path, sig):
    """Ctrl-C or SIGTERM inside torch.save (here at its third write): the checkpoint is
    finished, whole, and the interrupt comes right after as KeyboardInterrupt. Raised inside
    the save, it surfaced as torch's RuntimeError (a traceback) or was lost."""
    path = str(tmp_path / "ckpt.pth.tar")
    state = {"w": torch.arange(100_000.0), "epoch": 3}
    with raising_keyboard_interrupt(sig), pytest.raises(KeyboardInterrupt):
        utils.atomic_write(path, lambda f: torch.save(state, SignalsMidWrite(f, sig)))
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 3 and torch.equal(saved["w"], state["w"])
    assert os.listdir(tmp_path) == ["ckpt.pth.tar"]  # no temporary file left


def test_interrupt_between_the_two_checkpoint_files_waits_for_both(workdir, monkeypatch):
    """A new best writes _ckpt, then _model_best: Ctrl-C between them must not leave the best
    model an epoch behind the checkpoint that says it is the best."""
    import config
    from trainer import Trainer
    monkeypatch.chdir(workdir)
    import data_loader
    cfg = config.get_config(TINY)
    utils.prepare_dirs(cfg.ckpt_dir)
    trainer = Trainer(cfg, torch.device("cpu"), *data_loader.get_train_valid_loader(cfg, "cpu"))
    save_torch = utils.save_torch

    def save_then_interrupt(obj, path):
        save_torch(obj, path)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(utils, "save_torch", save_then_interrupt)
    with raising_keyboard_interrupt(signal.SIGINT), pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(4, is_best=True)
    for best in (False, True):
        assert torch.load(trainer.ckpt_path(best), weights_only=True)["epoch"] == 4


def test_missing_mnist_leaves_no_folder_behind(tmp_path):
    """The failed download (no network) must not leave data/MNIST/raw behind, empty."""
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_main(tmp_path, "--epochs=1", f"--data_dir={empty}", *TINY, check=False)
    assert_user_error(proc, "MNIST not found", str(empty / "MNIST" / "raw"))
    assert os.listdir(empty) == []


def test_an_interrupted_epoch_leaves_no_pickles(workdir, monkeypatch):
    """The glimpses of an epoch are written with its checkpoint: Ctrl-C during epoch 2's
    validation leaves epoch 1's pickles only."""
    import config
    import data_loader
    from trainer import Trainer
    monkeypatch.chdir(workdir)
    cfg = config.get_config(["--epochs=3", *TINY])
    trainer = Trainer(cfg, torch.device("cpu"), *data_loader.get_train_valid_loader(cfg, "cpu"))
    utils.prepare_dirs(cfg.ckpt_dir, trainer.plot_dir)
    evaluate, calls = trainer.evaluate, []

    def interrupted_in_epoch_2(loader):
        calls.append(loader)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(loader)

    trainer.evaluate = interrupted_in_epoch_2
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert sorted(os.listdir(trainer.plot_dir)) == ["g_1.p", "l_1.p", "params.json"]
    assert trainer.saved_epoch() == 1
