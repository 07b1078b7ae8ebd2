"""Shared fixtures: tiny MNIST-format files written by the tests, and the CLI as a subprocess."""
import os
import shutil
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
# where the real MNIST may be: $RAM_MNIST, where the README puts it, beside the repository
MNIST_PLACES = [p for p in (os.environ.get("RAM_MNIST"),
                            os.path.join(ROOT, "data", "MNIST", "raw"),
                            os.path.join(SHARED, "data", "MNIST", "raw")) if p]
sys.path.insert(0, ROOT)
import launcher  # noqa: E402
import utils  # noqa: E402


def real_mnist_folder():
    """The first of MNIST_PLACES that holds the four MNIST files, or None."""
    import data_loader
    for place in MNIST_PLACES:
        if all(data_loader._find(place, n) for n in sum(data_loader.MNIST_FILES.values(), ())):
            return place
    return None


def make_config(*flags):
    """The config main.py would run with for these flags, checked as main checks it."""
    import config
    c = config.get_config(list(flags))
    config.check(c)
    return c


def make_trainer(config, device="cpu"):
    """The Trainer main.py makes for config, in one process, on its batches."""
    import main
    from trainer import Trainer
    device = torch.device(device)
    train, valid = main.dataset(config).get_train_valid_loader(config, device)
    model = main.build(config, train.image_shape, train.classes, device)
    net = main.data_parallel(model, train, valid, device, *utils.world())
    return Trainer(config, model, train, valid, device, net, master=utils.world()[0] == 0)


def write_idx(path, array):
    """Writes a uint8 array in LeCun's idx format (what torchvision's MNIST files are)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with open(path, "wb") as f:
        f.write(header + array.tobytes())


def make_mnist(data_dir, n_train=100, n_test=40, seed=0):
    """Tiny MNIST in <data_dir>/MNIST/raw: each digit class is a bright square at its own
    place, so a model can learn it, plus noise."""
    rng = np.random.RandomState(seed)
    raw = os.path.join(data_dir, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.randint(0, 10, n)
        images = rng.randint(0, 40, (n, 28, 28))
        for i, y in enumerate(labels):
            r, c = 2 + 8 * (y // 4), 2 + 8 * (y % 4)
            images[i, r:r + 6, c:c + 6] = 255
        write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images)
        write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels)
    return data_dir


@pytest.fixture
def workdir(tmp_path):
    """A folder with tiny MNIST in data/, to run main.py in (its default folders are relative)."""
    make_mnist(str(tmp_path / "data"))
    return tmp_path


launched = None  # the launcher of this process's last run_main


def run_main(cwd, *args, check=True, timeout=300):
    """python main.py ARGS in cwd, as a user runs it, a process of its own (launcher.py: one
    that need not import torch again); returns the CompletedProcess."""
    global launched
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if launched is None or not launched.serves(env):
        if launched is not None:
            launched.close()
        launched = launcher.Launcher(env)
    proc = launched.run(cwd, args, env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"main.py {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


TINY = ("--batch_size=16", "--M=2", "--print_freq=2", "--num_workers=0")


@pytest.fixture
def real_mnist(tmp_path):
    """A temporary copy of the real MNIST (never unpacked where it was found)."""
    found = real_mnist_folder()
    if found is None:
        pytest.skip("the real MNIST files are in none of " + ", ".join(MNIST_PLACES) +
                    " (set RAM_MNIST to the folder that holds them)")
    raw = tmp_path / "data" / "MNIST" / "raw"
    shutil.copytree(found, raw)
    return str(tmp_path / "data")
