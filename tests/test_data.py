"""The datasets: MNIST as the seed serves it, and the paper's translated and cluttered canvases
against a plain reference, one pixel at a time."""
import gzip
import os

import numpy as np
import pytest
import torch
from PIL import Image

import data_loader
from conftest import make_config, make_mnist


def batches(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_values_and_split_are_the_seeds(tmp_path):
    make_mnist(str(tmp_path), n_train=50)
    config = make_config(f"--data_dir={tmp_path}", "--valid_size=0.2", "--batch_size=8")
    train, valid = data_loader.get_train_valid_loader(config, "cpu")
    # the seed: np.random.seed(1); np.random.shuffle(list(range(50))); first 10 validate
    indices = list(range(50))
    np.random.seed(1)
    np.random.shuffle(indices)
    assert valid.indices.tolist() == indices[:10] and train.indices.tolist() == indices[10:]
    # the seed's per-image transforms give the same floats, bit for bit: ToTensor's float32
    # / 255 of the PIL image's bytes, then Normalize's float32 tensors subtracted and divided
    raw = data_loader.read_idx(str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"))
    mean, std = torch.tensor([0.1307]).view(1, 1, 1), torch.tensor([0.3081]).view(1, 1, 1)
    x, y = batches(valid)
    for row, i in enumerate(indices[:10]):
        pixels = np.asarray(Image.fromarray(raw[i].numpy(), mode="L"))
        seed = torch.from_numpy(pixels.copy()).unsqueeze(0).to(torch.float32).div(255)
        assert torch.equal(x[row], seed.sub_(mean).div_(std))


def test_each_epoch_is_a_new_order_of_every_image(tmp_path):
    make_mnist(str(tmp_path), n_train=50)
    train, _ = data_loader.get_train_valid_loader(
        make_config(f"--data_dir={tmp_path}", "--valid_size=0.2", "--batch_size=8"), "cpu")
    orders = []
    for epoch in (0, 1, 0):
        train.set_epoch(epoch)
        xs, ys = batches(train)
        assert len(ys) == 40 and len(xs) == 40
        orders.append(xs.flatten(1).sum(1))
    assert not torch.equal(orders[0], orders[1])  # reshuffled
    assert torch.equal(orders[0], orders[2])  # a function of (seed, epoch) alone: resumable
    assert torch.equal(orders[0].sort().values, orders[1].sort().values)  # the same images


def test_gzipped_and_plain_files_read_alike(tmp_path):
    make_mnist(str(tmp_path))
    path = str(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")
    with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
        g.write(f.read())
    plain = data_loader.read_idx(path)
    os.remove(path)
    assert torch.equal(data_loader.read_idx(path + ".gz"), plain)


def test_data_dir_may_be_the_folder_of_the_files(tmp_path):
    make_mnist(str(tmp_path))
    raw = tmp_path / "MNIST" / "raw"
    files = sorted(os.listdir(raw))
    a = data_loader.load_mnist(str(tmp_path), train=False)
    b = data_loader.load_mnist(str(raw), train=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert sorted(os.listdir(raw)) == files  # nothing nested was made


def test_real_mnist(real_mnist):
    config = make_config(f"--data_dir={real_mnist}")
    train, valid = data_loader.get_train_valid_loader(config, "cpu")
    test = data_loader.get_test_loader(config, "cpu", 1000)
    assert (train.num_samples, valid.num_samples, test.num_samples) == (54000, 6000, 10000)
    assert train.images.shape == (60000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958,
                                                    1028, 974, 1009]
    # normalised as the seed: the training set's mean 0.1307 and std 0.3081 map to 0 and 1
    whole = data_loader.Batches(train.images, train.labels, range(60000), 60000,
                                normalisation=train.normalisation)
    x, _ = batches(whole)
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2


# ------------------------------------------------------------------------------- canvases
def plain_canvas(digit, where, pieces, crop, paste, S, p):
    """DeepMind's recipe, one paste at a time: each piece added and clipped, then the digit."""
    canvas = np.zeros((S, S), np.int64)
    for piece, (cr, cc), (pr, pc) in zip(pieces, crop, paste):
        canvas[pr:pr + p, pc:pc + p] = np.minimum(
            canvas[pr:pr + p, pc:pc + p] + piece[cr:cr + p, cc:cc + p], 255)
    r, c = where
    canvas[r:r + 28, c:c + 28] = np.minimum(canvas[r:r + 28, c:c + 28] + digit, 255)
    return canvas


@pytest.mark.parametrize("S,N,p", [(60, 4, 8), (100, 8, 8), (40, 3, 11), (28, 2, 28)])
def test_canvases_equal_the_plain_recipe(S, N, p):
    g = torch.Generator().manual_seed(S + N)
    b = 6
    digits = torch.randint(0, 256, (b, 1, 28, 28), generator=g, dtype=torch.uint8)
    pieces = torch.randint(0, 256, (b, N, 1, 28, 28), generator=g, dtype=torch.uint8)
    where = torch.randint(0, S - 28 + 1, (b, 2), generator=g)
    crop = torch.randint(0, 28 - p + 1, (b, N, 2), generator=g)
    paste = torch.randint(0, S - p + 1, (b, N, 2), generator=g)
    out = data_loader.compose(digits, where, pieces, crop, paste, S, p)
    assert out.shape == (b, 1, S, S)
    for i in range(b):
        expected = plain_canvas(digits[i, 0].numpy(), where[i].tolist(), pieces[i, :, 0].numpy(),
                                crop[i].tolist(), paste[i].tolist(), S, p)
        assert np.array_equal(out[i, 0].numpy(), expected), i
    assert out.max() == 255  # random bytes overlap: clipping was exercised


def canvas_loaders(tmp_path, *flags):
    make_mnist(str(tmp_path / "data"), n_train=60, n_test=20)
    config = make_config(f"--data_dir={tmp_path / 'data'}", "--batch_size=7", *flags)
    train, valid = data_loader.get_train_valid_loader(config, "cpu")
    return train, valid, data_loader.get_test_loader(config, "cpu", 5)


def test_translated_canvas_holds_the_digit_intact(tmp_path):
    train, _, test = canvas_loaders(tmp_path, "--dataset=translated", "--canvas_size=50")
    x, y = batches(test)
    assert x.shape == (20, 1, 50, 50)
    assert x.min() == 0 and x.max() <= 1  # scaled to [0, 1]: the background reads 0
    digits = test.images[test.indices].float() / 255
    for i in range(20):
        r, c = test.where[i].tolist()
        assert torch.equal(x[i, :, r:r + 28, c:c + 28], digits[i])
        rest = x[i].clone()
        rest[:, r:r + 28, c:c + 28] = 0
        assert not rest.any()  # nothing else on the canvas
    assert torch.equal(y, test.labels)


def test_cluttered_canvas_has_num_clutter_pieces(tmp_path):
    """With every digit a constant 1, a canvas's sum counts the pixels pasted: the digit's
    784 and N pieces of p*p (overlaps add up to at most N + 1, far below the clip)."""
    train, _, _ = canvas_loaders(tmp_path, "--dataset=cluttered", "--canvas_size=60",
                                 "--num_clutter=5", "--clutter_size=6")
    train.images = torch.ones_like(train.images)
    x, _ = next(iter(train))
    assert x.shape == (7, 1, 60, 60)
    assert (x * 255).round().flatten(1).sum(1).tolist() == [784 + 5 * 36] * 7


def test_clutter_defaults_follow_the_paper(tmp_path):
    assert make_config("--dataset=cluttered").num_clutter == 4
    assert make_config("--dataset=cluttered", "--canvas_size=100").num_clutter == 8
    assert make_config("--dataset=cluttered").clutter_size == 8
    assert make_config("--dataset=translated").num_clutter == 0


def test_clutter_comes_from_the_same_split(tmp_path):
    train, valid, test = canvas_loaders(tmp_path, "--dataset=cluttered", "--valid_size=0.5")
    for loader in (train, valid, test):
        assert loader.source.max() < loader.num_samples  # positions in the split's indices
    assert set(train.indices.tolist()).isdisjoint(valid.indices.tolist())


def test_valid_and_test_canvases_are_fixed(tmp_path):
    train, valid, test = canvas_loaders(tmp_path, "--dataset=cluttered")
    _, valid2, test2 = canvas_loaders(tmp_path / "again", "--dataset=cluttered")
    _, _, test3 = canvas_loaders(tmp_path / "other", "--dataset=cluttered",
                                 "--random_seed=5")
    v = batches(valid)[0]
    valid.set_epoch(3)
    assert torch.equal(v, batches(valid)[0])  # every epoch
    assert torch.equal(v, batches(valid2)[0])  # every run
    t = batches(test)[0]
    assert torch.equal(t, batches(test2)[0]) and torch.equal(t, batches(test3)[0])


def test_training_canvases_are_new_each_epoch_and_resumable(tmp_path):
    train, _, _ = canvas_loaders(tmp_path, "--dataset=cluttered", "--shuffle=False")
    again, _, _ = canvas_loaders(tmp_path / "again", "--dataset=cluttered", "--shuffle=False")
    train.set_epoch(1)
    x1 = batches(train)[0]
    train.set_epoch(2)
    x2 = batches(train)[0]
    again.set_epoch(1)  # a new loader, as after --resume=True
    assert not torch.equal(x1, x2)
    assert torch.equal(x1, batches(again)[0])
    train.batch_size = 13  # a canvas is drawn per image, not per batch
    train.set_epoch(1)
    assert torch.equal(x1.sum((1, 2, 3)).sort().values,
                       batches(train)[0].sum((1, 2, 3)).sort().values)
