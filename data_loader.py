"""The datasets: (train, valid, test) batches of normalised images behind one interface.

    mnist       the 28x28 digits, as the seed (its split, its normalisation)
    translated  each digit at a random place on an empty canvas (the paper's 60x60 task)
    cluttered   the same, plus clutter pieces cut from other digits (60x60 and 100x100)

MNIST is read once from its four idx files (gz or not) into one uint8 tensor on the training
device and served by index; no per-image transforms, no worker processes. The split is the
seed's: np.random.seed(random_seed); np.random.shuffle(indices); the first valid_size validate.

Canvases follow DeepMind's mnist-cluttered generator, the one behind the paper's numbers: the
digit entirely inside the canvas at a uniformly random place; each clutter piece a random
clutter_size square crop of a random digit of the same split, at a uniformly random place;
overlaps add and are clipped at 255. A canvas is drawn from a few integers per image (where
the digit goes, which digits the pieces come from, where they are cut and pasted) and
rendered per batch by one scatter, so an epoch's canvases never exist all at once. Training
canvases are new every epoch, drawn from (random_seed, epoch), so a resumed run sees exactly
what an uninterrupted one would; validation and test canvases are fixed, drawn from seeds of
their own whatever --random_seed is, and the test set is one canvas per test digit.
"""
import contextlib
import gzip
import io
import os
import shutil
import tempfile
import warnings
import zlib

import numpy as np
import torch

from utils import UserError

MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# (mean, std) after /255. MNIST keeps the seed's Normalize((0.1307,), (0.3081,)). A canvas is
# only scaled to [0, 1]: its empty background must read 0, like the zeros the retina pads
# with outside the image, or the border of the canvas would be a visible edge to home in on.
NORMALISATION = {"mnist": (0.1307, 0.3081), "translated": (0.0, 1.0), "cluttered": (0.0, 1.0)}
CANVAS_SEEDS = {"valid": 1406_6247, "test": 2014_1206}  # fixed: everyone's test set is the same
DIGIT = 28


class Shards:
    """An epoch of num_samples items in batches; under torchrun each process serves its shard
    (shard()). Subclasses give num_samples and batch_size."""
    rank, world, pad = 0, 1, False
    classes = [str(i) for i in range(10)]  # class k's name (the digits for MNIST)

    def shard(self, rank, world, pad):
        """Serve only process rank's share of world, as DistributedSampler does: the epoch's
        order (the same on every process), strided. pad (training): the order wraps around to
        a multiple of world, so that every process runs the same number of batches (a few
        items twice an epoch); without (evaluation): every item exactly once."""
        self.rank, self.world, self.pad = rank, world, pad

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def local_samples(self):
        """How many items this process serves an epoch."""
        n = self.num_samples
        return -(-n // self.world) if self.pad else len(range(self.rank, n, self.world))

    def __len__(self):
        return -(-self.local_samples // self.batch_size)

    def share(self, order):
        """This process's part of the epoch's order of positions."""
        if self.world > 1:
            if self.pad:
                order = torch.cat([order, order[:-len(order) % self.world]])
            order = order[self.rank::self.world]
        return order


class Batches(Shards):
    """(x, y) batches: x float (b, C, H, W) normalised, y long (b,), over images[indices].

    Reshuffled each epoch when shuffle is set; the order of epoch e depends on (seed, e) alone,
    so a resumed run sees the same batches as an uninterrupted one with no sampler state.
    Under torchrun each process serves its shard (shard())."""

    def __init__(self, images, labels, indices, batch_size, shuffle=False, seed=0,
                 normalisation=(0.0, 1.0)):
        self.images, self.labels = images, labels
        self.indices = torch.as_tensor(indices, dtype=torch.long, device=images.device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.normalisation = normalisation
        self.epoch = 0

    @property
    def num_samples(self):
        return len(self.indices)

    @property
    def image_shape(self):
        """(C, H, W) of x."""
        return tuple(self.images.shape[1:])

    def set_epoch(self, epoch):
        self.epoch = epoch

    def order(self):
        """This process's positions in the split for this epoch, in the order served."""
        order = torch.arange(self.num_samples, device=self.indices.device)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(len(order), generator=g).to(order.device)
        return self.share(order)

    def __iter__(self):
        order = self.order()
        for i in range(0, len(order), self.batch_size):
            p = order[i:i + self.batch_size]  # positions in the split
            yield self.normalise(self.render(p)), self.labels[self.indices[p]]

    def normalise(self, x):
        """The seed's arithmetic: ToTensor's /255, then Normalize."""
        mean, std = self.statistics(x.device)
        return x.float().div_(255).sub_(mean).div_(std)

    def pictures(self, x):
        """Batch x as pickled for plot_glimpses: grey as served (the seed's pickles), colour
        back in [0, 1], since a per-channel normalisation shifts colours."""
        if x.shape[1] == 1:
            return x
        mean, std = self.statistics(x.device)
        return x * std + mean

    def replay(self, x, y):
        """The first 9 of a batch, for the model to look at again after the epoch."""
        return x[:9], y[:9]

    def glimpses(self, x, y, out):
        """What the pickles keep of a batch's first 9 images: the pictures, the glimpses'
        locations, the classes and the predictions."""
        return (self.pictures(x[:9]).cpu().numpy(), out.locs[:9].detach().cpu().numpy(),
                [self.classes[k] for k in y[:9].tolist()],
                [self.classes[k] for k in out.log_probas[:9].argmax(1).tolist()])

    def statistics(self, device):
        """(mean, std): numbers, or (C, 1, 1) tensors when there is one per channel (folders)."""
        mean, std = self.normalisation
        if isinstance(mean, (list, tuple)):
            return (torch.tensor(v, device=device).view(-1, 1, 1) for v in (mean, std))
        return mean, std

    def render(self, p):
        """The images (uint8 or float in [0, 255]) at positions p of the split."""
        return self.images[self.indices[p]]


class Canvases(Batches):
    """Batches of canvases made from the split's digits (the module docstring says how).

    With fixed_seed the canvases are drawn once and are the same every epoch; without, they
    are drawn afresh each epoch from (seed, epoch)."""

    def __init__(self, images, labels, indices, batch_size, canvas_size, num_clutter,
                 clutter_size, shuffle=False, seed=0, fixed_seed=None, normalisation=(0.0, 1.0)):
        super().__init__(images, labels, indices, batch_size, shuffle, seed, normalisation)
        self.size, self.num_clutter, self.clutter_size = canvas_size, num_clutter, clutter_size
        self.fixed_seed = fixed_seed
        self.draw()

    @property
    def image_shape(self):
        return (self.images.shape[1], self.size, self.size)

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        if self.fixed_seed is None:
            self.draw()

    def draw(self):
        """The integers that make each canvas of this epoch: where the digit goes (n, 2); for
        each piece (n, N, ...), its source digit (a position in the split), the crop's corner
        and the corner it is pasted at, all (row, column)."""
        key = [self.fixed_seed] if self.fixed_seed is not None else [self.seed, self.epoch, 1]
        key = int(np.random.SeedSequence(key).generate_state(1)[0])
        g = torch.Generator().manual_seed(key)
        n, N, p, S = self.num_samples, self.num_clutter, self.clutter_size, self.size
        draws = (torch.randint(S - DIGIT + 1, (n, 2), generator=g),
                 torch.randint(max(n, 1), (n, N), generator=g),
                 torch.randint(DIGIT - p + 1, (n, N, 2), generator=g),
                 torch.randint(S - p + 1, (n, N, 2), generator=g))
        self.where, self.source, self.crop, self.paste = (
            d.to(self.indices.device) for d in draws)

    def render(self, p):
        pieces = self.images[self.indices[self.source[p]]]  # (b, N, C, 28, 28)
        return compose(self.images[self.indices[p]], self.where[p], pieces, self.crop[p],
                       self.paste[p], self.size, self.clutter_size)


def compose(digits, where, pieces, crop, paste, S, p):
    """Canvases (b, C, S, S) float in [0, 255]: digits (b, C, 28, 28) at corners where (b, 2),
    on top of the p x p crops at crop (b, N, 2) of pieces (b, N, C, 28, 28) pasted at corners
    paste (b, N, 2); overlaps add, clipped at 255 (adding all, then clipping once, is the
    same as clipping after each paste: every value is >= 0)."""
    b, C = digits.shape[:2]
    N = pieces.shape[1]
    dev = digits.device

    def block(n, width):  # flat offsets of an n x n block in a row-major image of that width
        r = torch.arange(n, device=dev)
        return (r[:, None] * width + r).flatten()

    def corner(rc, width):
        return (rc[..., 0] * width + rc[..., 1]).unsqueeze(-1)

    idx = [corner(where, S) + block(DIGIT, S)]  # (b, 784)
    val = [digits.flatten(2).float()]  # (b, C, 784)
    if N:
        cut = (corner(crop, DIGIT) + block(p, DIGIT)).unsqueeze(2).expand(b, N, C, p * p)
        cut = pieces.flatten(3).gather(3, cut).float()  # (b, N, C, p*p)
        idx.append((corner(paste, S) + block(p, S)).flatten(1))  # (b, N*p*p)
        val.append(cut.transpose(1, 2).flatten(2))  # (b, C, N*p*p), pieces in idx's order
    idx = torch.cat(idx, 1).unsqueeze(1).expand(b, C, -1)
    canvas = torch.zeros(b, C, S * S, device=dev).scatter_add_(2, idx, torch.cat(val, 2))
    return canvas.clamp_(max=255).view(b, C, S, S)


# ------------------------------------------------------------------------------- MNIST files
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


def _find(folder, name):
    for path in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.isfile(path):
            return path
    return None


def mnist_folder(data_dir):
    """The folder with the MNIST files: <data_dir>/MNIST/raw (torchvision's layout), or
    data_dir itself when the user pointed --data_dir at the files."""
    names = MNIST_FILES[True] + MNIST_FILES[False]
    if all(_find(data_dir, n) for n in names):
        return data_dir
    return os.path.join(data_dir, "MNIST", "raw")


def load_mnist(data_dir, train):
    """(images (N, 1, 28, 28) uint8, labels (N,) long) from mnist_folder(data_dir)."""
    raw = mnist_folder(data_dir)
    names = MNIST_FILES[train]
    why = _download(data_dir) if any(_find(raw, n) is None for n in names) else None
    missing = [n + ".gz" for n in names if _find(raw, n) is None]
    if missing:
        raise UserError(f"MNIST not found: {', '.join(missing)} missing from "
                        f"{os.path.abspath(raw)} and the download failed ({why}); "
                        "copy the four official MNIST files there")
    images, labels = (read_idx(_find(raw, n)) for n in names)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise UserError(f"MNIST files in {raw} do not match: {tuple(images.shape)} images, "
                        f"{tuple(labels.shape)} labels")
    return images.unsqueeze(1), labels.long()


def _download(data_dir):
    """torchvision's downloader into a temporary folder, moved into <data_dir>/MNIST/raw only
    when it succeeded: a failed download (no network) leaves no empty folders behind. Returns
    why it failed, for the caller's line naming the missing files (None: it did not)."""
    try:  # imported here: nothing else needs torchvision, and a broken one must not stop us
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchvision import datasets
    except ModuleNotFoundError:
        return "torchvision, which downloads it, is not installed"
    except Exception as e:  # pip can pair torch with a torchvision built for another torch
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return (f"torchvision cannot be imported: {first}; it was built for another torch "
                f"than {torch.__version__}: install the pair again, then check it with "
                "python -c 'import torchvision'")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(
                    io.StringIO()):
                datasets.MNIST(tmp, train=True, download=True)
        except Exception as e:  # torchvision tries several mirrors; each fails its own way
            return f"no network? {type(e).__name__}"
        got = os.path.join(tmp, "MNIST", "raw")
        raw = os.path.join(data_dir, "MNIST", "raw")
        os.makedirs(raw, exist_ok=True)
        for f in os.listdir(got):
            if f.endswith(".gz"):
                shutil.move(os.path.join(got, f), os.path.join(raw, f))


def split_indices(num_train, valid_size, random_seed, shuffle):
    """The seed's train/validation split: (train_idx, valid_idx)."""
    indices = list(range(num_train))
    split = int(np.floor(valid_size * num_train))
    if shuffle:
        np.random.seed(random_seed)
        np.random.shuffle(indices)
    return indices[split:], indices[:split]


# ------------------------------------------------------------------------------- the interface
def _loader(config, images, labels, indices, batch_size, train, canvas_seed=None):
    normalisation = NORMALISATION[config.dataset]
    if config.dataset == "mnist":
        return Batches(images, labels, indices, batch_size, shuffle=train,
                       seed=config.random_seed, normalisation=normalisation)
    return Canvases(images, labels, indices, batch_size, config.canvas_size,
                    config.num_clutter, config.clutter_size, shuffle=train,
                    seed=config.random_seed, fixed_seed=canvas_seed,
                    normalisation=normalisation)


def get_train_valid_loader(config, device, eval_batch_size=None):
    """(train, valid) batches of config.dataset on device (image_folder.py serves "folder")."""
    images, labels = load_mnist(config.data_dir, train=True)
    images, labels = images.to(device), labels.to(device)
    train_idx, valid_idx = split_indices(len(images), config.valid_size, config.random_seed,
                                         config.shuffle)
    train = _loader(config, images, labels, train_idx, config.batch_size, True)
    valid = _loader(config, images, labels, valid_idx, eval_batch_size or config.batch_size,
                    False, CANVAS_SEEDS["valid"])
    return train, valid


def get_test_loader(config, device, batch_size):
    """The test batches: MNIST's 10,000 test digits, or one fixed canvas for each (main.test
    then normalises them as the model's training data was)."""
    images, labels = load_mnist(config.data_dir, train=False)
    images, labels = images.to(device), labels.to(device)
    return _loader(config, images, labels, range(len(images)), batch_size, False,
                   CANVAS_SEEDS["test"])
