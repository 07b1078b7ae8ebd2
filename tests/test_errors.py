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

import numpy as np
import pytest
import torch

import checkpoint
import utils
from conftest import ROOT, TINY, make_trainer, run_main

pytestmark = pytest.mark.slow  # subprocesses: main.py, torchrun, plot_glimpses.py

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


@pytest.mark.parametrize("flags,words,code", [
    (["--patch_size=0"], ["--patch_size", "positive"], 1),
    (["--batch_size=ten"], ["--batch_size", "invalid int value"], 2),
    (["--epoch=3"], ["unrecognized", "--epochs?"], 2),
])
def test_bad_flags(trained, flags, words, code):
    """A refused flag as main.py says it, in a process: a value main checks (exit 1), and
    what argparse rejects (exit 2, as argparse documents), by type or by name. Every
    refusal and its reason, in-process: test_config.py."""
    before = snapshot(trained / "ckpt")
    proc = run_main(trained, *TINY, *flags, check=False)
    assert_user_error(proc, *words)
    assert proc.returncode == code, proc.stderr
    assert snapshot(trained / "ckpt") == before


def test_missing_checkpoints(workdir):
    proc = run_main(workdir, "--is_train=False", check=False)
    assert_user_error(proc, os.path.join(".", "ckpt", f"{NAME}_model_best.pth.tar"))
    proc = run_main(workdir, "--resume=True", *TINY, check=False)
    assert_user_error(proc, f"{NAME}_ckpt.pth.tar", "train first")


@pytest.mark.parametrize("damage", ["random", "protocol 141", "truncated", "empty"])
def test_broken_checkpoint(trained, tmp_path, damage):
    """One line, whatever the bytes: a file whose first bytes read as a pickle of an unknown
    protocol made torch warn first (seeded bytes: the same file every run)."""
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    good = (trained / "ckpt" / f"{NAME}_model_best.pth.tar").read_bytes()
    noise = np.random.RandomState(88).bytes(5000)
    data = {"random": noise, "protocol 141": b"\x80\x8d" + noise,
            "truncated": good[:len(good) // 2], "empty": b""}
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
        (raw / "train-images-idx3-ubyte.gz").write_bytes(np.random.RandomState(3).bytes(3000))
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
    from trainer import Diverged
    monkeypatch.chdir(workdir)
    cfg = config.get_config(["--epochs=2", "--plot_freq=0", *TINY])
    utils.prepare_dirs(cfg.ckpt_dir)
    trainer = make_trainer(cfg)
    trainer.train_one_epoch(0)
    trainer.save(1, is_best=True)
    before = snapshot(workdir / "ckpt")
    with torch.no_grad():
        trainer.model.rnn.h2h.weight.fill_(float("nan"))
    with pytest.raises(Diverged, match="epoch 2, batch 1; training stopped and epoch 1 is kept"):
        trainer.train_one_epoch(1)
    assert snapshot(workdir / "ckpt") == before


def test_a_bad_loss_between_two_looks_is_named_at_its_batch(workdir, monkeypatch):
    """The losses are looked at every --print_freq batches (a GPU is not stalled each step):
    a loss that turns infinite at batch 13, seen at batch 20, is still named at 13."""
    import config
    from trainer import Diverged
    monkeypatch.chdir(workdir)
    cfg = config.get_config(["--plot_freq=0", "--batch_size=4", "--print_freq=10", "--M=2",
                             "--num_workers=0"])
    utils.prepare_dirs(cfg.ckpt_dir)
    trainer = make_trainer(cfg)
    rollout, calls = trainer.run, []

    def run(*args):
        out, losses = rollout(*args)
        calls.append(len(calls) + 1)
        return out, losses._replace(action=losses.action * float("inf")) if calls[-1] == 13 \
            else losses
    trainer.run = run
    with pytest.raises(Diverged, match=r"the loss became inf in epoch 1, batch 13; training "
                                       "stopped and no checkpoint was written"):
        trainer.train_one_epoch(0)
    assert calls[-1] == 20 and not os.listdir(cfg.ckpt_dir)


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


def saved_epoch(path):
    """The epoch in the checkpoint at path, 0 while there is none or it cannot be read."""
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except Exception:
        return 0


def files_state(folder):
    """Name -> (size, mtime) of each file in folder; a file renamed away between the listing
    and its stat (a save finishing) shows as None, itself a change."""
    state = {}
    for e in os.scandir(folder):
        try:
            st = e.stat()
            state[e.name] = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            state[e.name] = None
    return state


def test_kill_9_never_leaves_a_broken_checkpoint(workdir):
    """kill -9 while checkpoints are being written: each run waits for its first save (past
    start-up), then for the next save to begin (a file in ckpt/ appears or changes), and
    is killed 0 to 40 ms into it; every checkpoint file left loads, whole. A big model makes
    a save (2 x 37 MB on a new best) long enough to be hit."""
    big = ("--glimpse_hidden=512", "--loc_hidden=512", "--hidden_size=1024", "--plot_freq=0")
    ckpt_dir = workdir / "ckpt"
    path = ckpt_dir / f"{NAME}_h512-512_ckpt.pth.tar"
    epochs = []
    for delay in (0.0, 0.005, 0.01, 0.02, 0.04):  # five points of the save (the suite's time)
        proc = start_training(workdir, "--epochs=1000", f"--resume={bool(epochs)}", *big,
                              *TINY)
        end, seen = time.time() + 120, None
        while True:  # read the 37 MB file only when a save has changed it
            now = files_state(ckpt_dir).get(path.name) if ckpt_dir.is_dir() else None
            if now is not None and now != seen:
                if saved_epoch(path) > (epochs[-1] if epochs else 0):
                    break
                seen = now
            assert proc.poll() is None, proc.communicate()
            assert time.time() < end, "no new checkpoint appeared"
            time.sleep(0.01)
        state = files_state(ckpt_dir)
        while files_state(ckpt_dir) == state:  # until the next save begins
            assert proc.poll() is None and time.time() < end
            time.sleep(0.001)
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        for f in os.listdir(ckpt_dir):
            if f.endswith(".pth.tar"):  # raises if half-written
                ckpt = torch.load(ckpt_dir / f, weights_only=True)
                assert set(ckpt["model_state"]) and ckpt["epoch"] >= 1, f
        epochs.append(torch.load(path, weights_only=True)["epoch"])
    assert epochs == sorted(epochs) and epochs[-1] >= len(epochs)


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
    monkeypatch.chdir(workdir)
    cfg = config.get_config(TINY)
    utils.prepare_dirs(cfg.ckpt_dir)
    trainer = make_trainer(cfg)
    save_torch = utils.save_torch

    def save_then_interrupt(obj, path):
        save_torch(obj, path)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(utils, "save_torch", save_then_interrupt)
    with raising_keyboard_interrupt(signal.SIGINT), pytest.raises(KeyboardInterrupt):
        trainer.save(4, is_best=True)
    for best in (False, True):
        assert torch.load(checkpoint.path(cfg, best), weights_only=True)["epoch"] == 4


def test_missing_mnist_leaves_no_folder_behind(tmp_path):
    """The failed download (no network) must not leave data/MNIST/raw behind, empty."""
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_main(tmp_path, "--epochs=1", f"--data_dir={empty}", *TINY, check=False)
    assert_user_error(proc, "MNIST not found", str(empty / "MNIST" / "raw"))
    assert os.listdir(empty) == []


def test_a_broken_torchvision_is_named_for_what_it_is(tmp_path):
    """A torchvision built for another torch (pip's fallback wheels) fails to import with
    'operator torchvision::nms does not exist': MNIST missing, the one line says so, and how
    to check the pair; nothing else needs torchvision, so a present MNIST trains."""
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import warnings\nwarnings.warn('Failed to load image Python extension')\n"
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--epochs=1",
                           f"--data_dir={empty}", *TINY], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert_user_error(proc, "MNIST not found", "torchvision cannot be imported: operator "
                      "torchvision::nms does not exist", "python -c 'import torchvision'")
    assert os.listdir(empty) == []


def test_an_interrupted_epoch_leaves_no_pickles(workdir, monkeypatch):
    """The glimpses of an epoch are written with its checkpoint: Ctrl-C during epoch 2's
    validation leaves epoch 1's pickles only."""
    import config
    monkeypatch.chdir(workdir)
    cfg = config.get_config(["--epochs=3", *TINY])
    trainer = make_trainer(cfg)
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
    assert sorted(os.listdir(trainer.plot_dir)) == ["g_1.p", "l_1.p", "params.json", "y_1.p"]
    assert checkpoint.saved_epoch(cfg) == 1


def test_resuming_past_epochs_is_refused(trained):
    before = snapshot(trained / "ckpt")
    proc = run_main(trained, "--resume=True", "--epochs=1", *TINY, check=False)
    assert_user_error(proc, "the checkpoint has 1 epochs", "--epochs=1 is the total")
    assert snapshot(trained / "ckpt") == before


@pytest.mark.parametrize("flags,named", [
    (["--lr_decay=0.9"], ["--lr_decay=1 (given 0.9)"]),
    (["--init_lr=1e-3"], ["--init_lr=0.0003 (given 0.001)"]),
    (["--batch_size=64", "--std=0.2"], ["--batch_size=16 (given 64)", "--std=0.17 (given 0.2)"]),
])
def test_resuming_with_other_settings_is_refused_naming_each(trained, flags, named):
    """A resume continues the run as it was, or refuses: its params json and checkpoints are
    never rewritten with values the run did not use."""
    before = snapshot(trained / "ckpt")
    tiny = [f for f in TINY if f.split("=")[0] not in {g.split("=")[0] for g in flags}]
    proc = run_main(trained, "--resume=True", "--epochs=2", *flags, *tiny, check=False)
    assert_user_error(proc, *named, "continues as it was")
    assert snapshot(trained / "ckpt") == before


def test_init_from_a_missing_broken_or_misfitting_file(trained, tmp_path):
    best = trained / "ckpt" / f"{NAME}_model_best.pth.tar"
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(np.random.RandomState(4).bytes(3000))
    for source, flags, words in ((tmp_path / "none.pth.tar", [], ["--init_from: no checkpoint"]),
                                 (junk, [], ["not a readable checkpoint"]),
                                 (best, ["--patch_size=12"], ["another configuration",
                                                              "(128, 64) vs (128, 144)"]),
                                 (best, ["--random_seed=5", "--dataset=translated"],
                                  ["another train/validation split", "--random_seed=1 (given 5)"]),
                                 (best, ["--valid_size=0.2"], ["--valid_size=0.1 (given 0.2)"])):
        proc = run_main(trained, "--epochs=1", f"--init_from={source}",
                        f"--ckpt_dir={tmp_path / 'new'}", *flags, *TINY, check=False)
        assert_user_error(proc, *words)
        assert snapshot(tmp_path / "new") in (None, {})


def test_not_a_ram_checkpoint(workdir):
    (workdir / "ckpt").mkdir()
    torch.save({"state_dict": {}}, workdir / "ckpt" / f"{NAME}_model_best.pth.tar")
    proc = run_main(workdir, "--is_train=False", *TINY, check=False)
    assert_user_error(proc, "is not a RAM checkpoint: it has no epoch, model_state, "
                            "best_valid_acc")


def test_seed_checkpoint_settings_come_from_the_json_beside_it(trained, tmp_path):
    """The seed kept its settings in <name>_params.json only: a checkpoint without params is
    checked against that json."""
    import json
    ckpt = torch.load(trained / "ckpt" / f"{NAME}_model_best.pth.tar", weights_only=True)
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    torch.save({k: ckpt[k] for k in ("epoch", "model_state", "optim_state", "best_valid_acc")},
               seed_dir / f"{NAME}_model_best.pth.tar")
    params = dict(ckpt["params"], num_glimpses=7)
    (seed_dir / f"{NAME}_params.json").write_text(json.dumps(params))
    proc = run_main(trained, "--is_train=False", f"--ckpt_dir={seed_dir}", *TINY, check=False)
    assert_user_error(proc, "--num_glimpses=7 (given 6)")


def test_best_false_tests_the_latest_checkpoint(trained, tmp_path):
    ckpt_dir = tmp_path / "two"
    ckpt_dir.mkdir()
    ckpt = torch.load(trained / "ckpt" / f"{NAME}_ckpt.pth.tar", weights_only=True)
    torch.save(ckpt, ckpt_dir / f"{NAME}_model_best.pth.tar")
    torch.save(dict(ckpt, epoch=5), ckpt_dir / f"{NAME}_ckpt.pth.tar")
    for flags, loaded in ((["--best=False"], "_ckpt.pth.tar checkpoint @ epoch 5"),
                          ([], "_model_best.pth.tar checkpoint @ epoch 1")):
        out = run_main(trained, "--is_train=False", f"--ckpt_dir={ckpt_dir}", *flags,
                       *TINY).stdout
        assert f"Loaded {NAME}{loaded}" in out


def test_a_model_tested_on_data_it_was_not_trained_for_is_one_line(trained, tmp_path):
    """A checkpoint says what it was trained on; one that says nothing is the seed's (MNIST
    28x28): asked to test on translated canvases, each is refused in one line, nothing
    written."""
    ckpt = torch.load(trained / "ckpt" / f"{NAME}_model_best.pth.tar", weights_only=True)
    assert ckpt["data"]["dataset"] == "mnist" and ckpt["model_args"]["num_glimpses"] == 6
    seed_like = {k: ckpt[k] for k in ("epoch", "model_state", "optim_state", "best_valid_acc")}
    assert checkpoint.trained_data(seed_like) == checkpoint.SEED_DATA
    for state, words in ((ckpt, "--dataset=mnist (given translated)"),
                         (seed_like, "CxHxW (1x40x40) are not the model's (1x28x28)")):
        folder = tmp_path / str(len(state))
        folder.mkdir()
        torch.save(state, folder / f"{NAME}_translated40_model_best.pth.tar")
        before = snapshot(folder)
        proc = run_main(trained, "--is_train=False", f"--ckpt_dir={folder}",
                        "--dataset=translated", "--canvas_size=40", *TINY, check=False)
        assert_user_error(proc, words)
        assert snapshot(folder) == before
