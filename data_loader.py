"""MNIST decoded once into one normalised tensor, served in batches by index.

The seed ran torchvision transforms per image in DataLoader workers; for a 28x28 dataset that
costs more than the model. Here the four idx files are read once (gz or not), normalised with
the seed's arithmetic (ToTensor's /255, then Normalize((0.1307,), (0.3081,))), put on the
training device, and each epoch draws its batches from a seeded permutation. The split is the
seed's: np.random.seed(random_seed); np.random.shuffle(indices); the first valid_size for
validation.
"""
import contextlib
import gzip
import io
import os
import zlib

import numpy as np
import torch

from utils import UserError

MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MEAN, STD = 0.1307, 0.3081


class Batches:
    """Iterates (x, y) batches over images[indices]; reshuffled each epoch when shuffle is set.

    The order of epoch e depends on (seed, e) alone, so a resumed run sees the same batches as
    an uninterrupted one without any sampler state to save.
    """

    def __init__(self, images, labels, indices, batch_size, shuffle=False, seed=0):
        self.images, self.labels = images, labels
        self.indices = torch.as_tensor(indices, dtype=torch.long, device=images.device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0

    @property
    def num_samples(self):
        return len(self.indices)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return -(-self.num_samples // self.batch_size)

    def __iter__(self):
        idx = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            idx = idx[torch.randperm(len(idx), generator=g).to(idx.device)]
        for i in range(0, len(idx), self.batch_size):
            j = idx[i:i + self.batch_size]
            yield self.images[j], self.labels[j]


def read_idx(path):
    """An idx file (LeCun's MNIST format, optionally gzipped) as a uint8 tensor."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {path} ({e}): it is truncated or corrupt; "
                        "replace it with the official MNIST file") from None
    ndim = data[3] if len(data) >= 4 else 0
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    size = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or ndim == 0 or len(data) != size:
        raise UserError(f"{path} is not a valid MNIST idx file (truncated or corrupt): "
                        "replace it with the official MNIST file")
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).view(*dims)


def _find(raw, name):
    for path in (os.path.join(raw, name), os.path.join(raw, name + ".gz")):
        if os.path.isfile(path):
            return path
    return None


def load_mnist(data_dir, train):
    """(images (N, 1, 28, 28) uint8, labels (N,) long) from <data_dir>/MNIST/raw."""
    raw = os.path.join(data_dir, "MNIST", "raw")
    names = MNIST_FILES[train]
    if any(_find(raw, n) is None for n in names):
        _download(data_dir)
    missing = [n + ".gz" for n in names if _find(raw, n) is None]
    if missing:
        raise UserError(f"MNIST not found: {', '.join(missing)} missing from "
                        f"{os.path.abspath(raw)} and the download failed (no network?); "
                        "copy the official MNIST files there")
    images, labels = (read_idx(_find(raw, n)) for n in names)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise UserError(f"MNIST files in {raw} do not match: {tuple(images.shape)} images, "
                        f"{tuple(labels.shape)} labels")
    return images.unsqueeze(1), labels.long()


def _download(data_dir):
    """torchvision's downloader, silenced: on failure the caller names the missing files."""
    from torchvision import datasets
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        with contextlib.suppress(Exception):
            datasets.MNIST(data_dir, train=True, download=True)


def normalise(images, device):
    """uint8 (N, C, H, W) -> float32 on device, exactly as ToTensor() + Normalize() do."""
    return images.to(device).float().div(255).sub_(MEAN).div_(STD)


def split_indices(num_train, valid_size, random_seed, shuffle):
    """The seed's train/validation split: (train_idx, valid_idx)."""
    indices = list(range(num_train))
    split = int(np.floor(valid_size * num_train))
    if shuffle:
        np.random.seed(random_seed)
        np.random.shuffle(indices)
    return indices[split:], indices[:split]


def get_train_valid_loader(data_dir, batch_size, random_seed, valid_size=0.1, shuffle=True,
                           device="cpu", eval_batch_size=None):
    images, labels = load_mnist(data_dir, train=True)
    images, labels = normalise(images, device), labels.to(device)
    train_idx, valid_idx = split_indices(len(images), valid_size, random_seed, shuffle)
    train = Batches(images, labels, train_idx, batch_size, shuffle=True, seed=random_seed)
    valid = Batches(images, labels, valid_idx, eval_batch_size or batch_size)
    return train, valid


def get_test_loader(data_dir, batch_size, device="cpu"):
    images, labels = load_mnist(data_dir, train=False)
    images, labels = normalise(images, device), labels.to(device)
    return Batches(images, labels, range(len(images)), batch_size)
