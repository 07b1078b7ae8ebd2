"""The in-memory MNIST: the seed's values, the seed's split, every image once per epoch."""
import gzip
import os

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

import data_loader
from conftest import make_mnist


def test_values_and_split_are_the_seeds(tmp_path):
    make_mnist(str(tmp_path), n_train=50)
    train, valid = data_loader.get_train_valid_loader(str(tmp_path), 8, random_seed=1,
                                                      valid_size=0.2)
    # the seed: np.random.seed(1); np.random.shuffle(list(range(50))); first 10 validate
    indices = list(range(50))
    np.random.seed(1)
    np.random.shuffle(indices)
    assert valid.indices.tolist() == indices[:10] and train.indices.tolist() == indices[10:]
    # the seed's per-image transforms give the same floats, bit for bit
    raw = data_loader.read_idx(str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"))
    seed_t = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,),
                                                                             (0.3081,))])
    for i in (0, 17, 49):
        expected = seed_t(Image.fromarray(raw[i].numpy(), mode="L"))
        assert torch.equal(train.images[i], expected)


def test_each_epoch_is_a_new_order_of_every_image(tmp_path):
    make_mnist(str(tmp_path), n_train=50)
    train, _ = data_loader.get_train_valid_loader(str(tmp_path), 8, 1, 0.2)
    orders = []
    for epoch in (0, 1, 0):
        train.set_epoch(epoch)
        ys = torch.cat([y for _, y in train])
        xs = torch.cat([x for x, _ in train])
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


def test_real_mnist(real_mnist):
    train, valid = data_loader.get_train_valid_loader(real_mnist, 32, 1, 0.1)
    test = data_loader.get_test_loader(real_mnist, 1000)
    assert (train.num_samples, valid.num_samples, test.num_samples) == (54000, 6000, 10000)
    assert train.images.shape == (60000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958,
                                                    1028, 974, 1009]
    # normalised as the seed: mean 0.1307 and std 0.3081 map to about 0 and 1
    assert abs(train.images.mean().item()) < 1e-3 and abs(train.images.std().item() - 1) < 1e-2
