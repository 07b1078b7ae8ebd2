"""--dataset=folder: image folders the tests write, run as a user runs main.py, and the reader's
parts against plain references."""
import os
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, make_config, run_main

pytestmark = pytest.mark.slow  # subprocesses: main.py, torchrun, plot_glimpses.py

CLASSES = ["circle", "cross", "dot"]


def make_folder(root, shape=(16, 16), colour=False, n=(24, 6), valid=0, ext="png", seed=0):
    """root/{train,test[,valid]}/<class>/<i>.<ext>: noise, and a bright block at the class's
    own place (in its own colour), so that a model can learn it."""
    rng = np.random.RandomState(seed)
    H, W = shape
    splits = [("train", n[0]), ("test", n[1])] + [("valid", valid)] * bool(valid)
    for split, count in splits:
        for k, name in enumerate(CLASSES):
            os.makedirs(root / split / name)
            for i in range(count):
                a = rng.randint(0, 60, (H, W, 3) if colour else (H, W)).astype(np.uint8)
                a[k * H // 3:(k + 1) * H // 3, k * W // 3:(k + 1) * W // 3] = \
                    (255, 80 * k, 0) if colour else 255
                Image.fromarray(a).save(root / split / name / f"{i}.{ext}")
    return root


def pixels(root, split):
    """Every image of root/split as float64 (N, C, H, W) in [0, 1], in the reader's order."""
    out = []
    for name in CLASSES:
        folder = root / split / name
        for f in sorted(os.listdir(folder)):
            a = np.asarray(Image.open(folder / f), dtype=np.float64) / 255
            out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(out)


def test_grey_folder_train_resume_test_predict(tmp_path):
    data = make_folder(tmp_path / "shapes")
    flags = ("--dataset=folder", "--data_dir=shapes", *TINY)
    out = run_main(tmp_path, "--epochs=1", *flags).stdout
    assert "[*] Train on 65 samples, validate on 7 samples" in out  # the seed's 10% of 72
    assert "[*] Images of 1 channel, 16x16 (HxW), 3 classes" in out  # what it found
    assert "[*] shapes: 3 classes, in this order: circle, cross, dot" in out
    name = "ram_6_8x8_2_shapes"
    ckpt = torch.load(tmp_path / "ckpt" / f"{name}_ckpt.pth.tar", weights_only=True)
    assert ckpt["data"]["image_shape"] == [1, 16, 16] and ckpt["data"]["classes"] == CLASSES
    # the statistics of the training split only, against numpy
    import data_loader
    train_idx, _ = data_loader.split_indices(72, 0.1, 1, True)
    x = pixels(data, "train")[train_idx]
    mean, std = ckpt["data"]["normalisation"]
    np.testing.assert_allclose(mean, [x.mean()], rtol=1e-9)
    np.testing.assert_allclose(std, [x.std()], rtol=1e-9)

    out = run_main(tmp_path, "--epochs=2", "--resume=True", *flags).stdout
    assert f"Loaded {name}_ckpt.pth.tar checkpoint @ epoch 1" in out and "Epoch: 2/2" in out
    # the run announced is the run used, on its own folder: --data_dir need not be given
    out = run_main(tmp_path, "--is_train=False", "--dataset=folder", *TINY).stdout
    assert f"[*] Using {name}, the run in ./ckpt that fits the flags given" in out
    assert re.search(r"\[\*\] Test Acc: \d+/18 \(", out)

    proc = run_main(tmp_path, "--is_train=False", "--predict=shapes/test", *flags)
    lines = [ln.split("\t") for ln in proc.stdout.splitlines() if "\t" in ln]
    assert [ln[0] for ln in lines] == [os.path.join("shapes", "test", c, f"{i}.png")
                                       for c in CLASSES for i in range(6)]
    assert all(c in CLASSES and 1 / 3 <= float(p) <= 1 for _, c, p in lines)
    gif = tmp_path / "plots" / name / "predict.gif"
    assert "predict.gif" in proc.stderr
    with Image.open(gif) as g:
        assert g.n_frames == 6
    one = run_main(tmp_path, "--is_train=False", "--predict=shapes/test/dot/3.png", *flags)
    assert [ln.split("\t")[0] for ln in one.stdout.splitlines() if "\t" in ln] == [
        "shapes/test/dot/3.png"]

    # a test set unlike the training data: one line
    os.rename(data / "test", data / "test_16x16")
    make_folder(tmp_path / "wide", shape=(16, 20))
    os.rename(tmp_path / "wide" / "test", data / "test")
    proc = run_main(tmp_path, "--is_train=False", *flags, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "the test set's CxHxW (1x16x20) are not the model's (1x16x16)" in proc.stderr
    os.rename(data / "test", tmp_path / "wide" / "test")
    os.rename(data / "test_16x16", data / "test")

    # bad --predict paths: one line each, and no GIF written
    gif.unlink()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image")
    (tmp_path / "broken.png").write_bytes((data / "test" / "dot" / "0.png").read_bytes()[:60])
    for path, words in (("empty", "no images there"), ("nowhere.png", "no such file"),
                        ("broken.png", "cannot read image broken.png")):
        proc = run_main(tmp_path, "--is_train=False", f"--predict={path}", *flags, check=False)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert words in proc.stderr and "\t" not in proc.stdout
        assert not gif.exists()

    # a folder with an unreadable image among good ones: it is named, the rest classified
    (tmp_path / "mixed").mkdir()
    for i in (1, 2):
        (tmp_path / "mixed" / f"{i}.png").write_bytes((data / "test" / "dot" / f"{i}.png")
                                                      .read_bytes())
    os.rename(tmp_path / "broken.png", tmp_path / "mixed" / "0.png")
    proc = run_main(tmp_path, "--is_train=False", "--predict=mixed", *flags, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [ln.split("\t")[0] for ln in proc.stdout.splitlines() if "\t" in ln] == [
        os.path.join("mixed", f"{i}.png") for i in (1, 2)]
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(errors) == 2 and "cannot read image mixed/0.png" in errors[0]
    assert "1 of 3 images could not be read" in errors[1]
    assert gif.exists()


def test_colour_non_square_streamed_with_its_own_valid_folder(tmp_path):
    make_folder(tmp_path / "flags", shape=(12, 20), colour=True, valid=3, ext="bmp")
    flags = ("--dataset=folder", "--data_dir=flags", "--in_memory_gb=0", *TINY)
    out = run_main(tmp_path, "--epochs=1", *flags).stdout
    assert "[*] Train on 72 samples, validate on 9 samples" in out
    assert "[*] Images of 3 channels, 12x20 (HxW), 3 classes" in out
    ckpt = torch.load(tmp_path / "ckpt" / "ram_6_8x8_2_flags_ckpt.pth.tar", weights_only=True)
    assert ckpt["data"]["image_shape"] == [3, 12, 20]
    x = pixels(tmp_path / "flags", "train")
    np.testing.assert_allclose(ckpt["data"]["normalisation"],
                               [x.mean((0, 2, 3)), x.std((0, 2, 3))], rtol=1e-9)
    with open(tmp_path / "plots" / "ram_6_8x8_2_flags" / "g_1.p", "rb") as f:
        g = pickle.load(f)[0]
    # colour pickles hold the pictures themselves, in [0, 1]: one of the training images
    assert g.shape == (9, 3, 12, 20)
    assert any(np.abs(g[0] - xi).max() < 1e-6 for xi in x)
    out = run_main(tmp_path, "--is_train=False", *flags).stdout
    assert re.search(r"\[\*\] Test Acc: \d+/18 \(", out)
    proc = run_main(tmp_path, "--is_train=False", "--predict=flags/test/cross", *flags)
    assert sum("\t" in ln for ln in proc.stdout.splitlines()) == 6


def loaders(data, *flags):
    import image_folder
    config = make_config("--dataset=folder", f"--data_dir={data}", "--num_workers=0",
                         "--batch_size=10", *flags)
    return image_folder.get_train_valid_loader(config, torch.device("cpu"), 16)


def test_streamed_and_in_memory_serve_the_same_batches(tmp_path):
    data = make_folder(tmp_path / "d", colour=True)
    memory, streamed = loaders(data), loaders(data, "--in_memory_gb=0")
    assert type(streamed[0]).__name__ == "Streamed" and type(memory[0]).__name__ == "Batches"
    for a, b in zip(memory, streamed):
        assert a.normalisation == b.normalisation and a.classes == b.classes == CLASSES
        for epoch in (0, 1):
            a.set_epoch(epoch)
            b.set_epoch(epoch)
            pairs = list(zip(a, b))
            assert len(pairs) == len(a) == len(b)
            for (xa, ya), (xb, yb) in pairs:
                assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_streamed_training_is_in_memory_training(tmp_path):
    """The same weights after an epoch either way, worker processes or not: reading images
    from disk must not touch the random stream the policy draws from."""
    make_folder(tmp_path / "d", colour=True)
    states = []
    for i, flags in enumerate([(), ("--in_memory_gb=0", "--num_workers=2")]):
        run_main(tmp_path, "--dataset=folder", "--data_dir=d", "--epochs=1", "--plot_freq=0",
                 f"--ckpt_dir=ck{i}", *TINY, *flags)
        states.append(torch.load(tmp_path / f"ck{i}" / "ram_6_8x8_2_d_ckpt.pth.tar",
                                 weights_only=True)["model_state"])
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_batches_are_the_images_normalised(tmp_path):
    """x of a batch: exactly (pixels / 255 - mean) / std per channel, y the class folders."""
    data = make_folder(tmp_path / "d", colour=True)
    train, _ = loaders(data, "--valid_size=0", "--shuffle=False")  # the split in order
    train.shuffle = False  # the files' order
    x, y = next(iter(train))
    mean, std = (np.array(v)[:, None, None] for v in train.normalisation)
    ref = pixels(data, "train")[:10]
    np.testing.assert_allclose(x.numpy(), (ref - mean) / std, rtol=1e-5, atol=1e-5)
    assert y.tolist() == [0] * 10


def test_channels_come_from_the_data_and_image_size_resizes(tmp_path):
    data = make_folder(tmp_path / "d", shape=(10, 10))
    assert loaders(data)[0].image_shape == (1, 10, 10)
    Image.new("RGB", (7, 5), (200, 10, 10)).save(data / "train" / "dot" / "red.jpg")
    assert loaders(data, "--image_size=6x9")[0].image_shape == (3, 6, 9)
    assert loaders(data, "--image_size=8")[0].image_shape == (3, 8, 8)


def test_probabilities_are_averaged_over_the_M_rollouts():
    """p: the mean over M rollouts of each image's softmax; row r of the rollouts looks at
    image r % B (checked by running each copy alone with the same noise)."""
    from model import ModelConfig, RecurrentAttention
    from main import probabilities
    torch.manual_seed(0)
    B, M, T = 5, 3, 4
    model = RecurrentAttention(ModelConfig(channels=3, num_classes=4, num_glimpses=T)).eval()
    x, l_0 = torch.randn(B, 3, 20, 14), torch.rand(M * B, 2) * 2 - 1
    with torch.no_grad():
        torch.manual_seed(1)
        _, p = probabilities(model, x, l_0)
        torch.manual_seed(1)
        eps = torch.randn(T, M * B, 2)
        ref = sum(model(x, l_0[m * B:(m + 1) * B], T, eps[:, m * B:(m + 1) * B])
                  .log_probas.exp() for m in range(M)) / M
    torch.testing.assert_close(p, ref)
    torch.testing.assert_close(p.sum(1), torch.ones(B))


def break_no_class(d):
    os.makedirs(d / "train")


def break_empty_class(d):
    make_folder(d)
    for f in os.listdir(d / "train" / "dot"):
        os.remove(d / "train" / "dot" / f)
    (d / "train" / "dot" / "readme.txt").write_text("not an image")


def break_corrupt(d):
    make_folder(d)
    (d / "train" / "cross" / "5.png").write_bytes(b"not a png")


def break_truncated(d):
    make_folder(d)
    f = d / "train" / "cross" / "5.png"
    f.write_bytes(f.read_bytes()[:70])


def break_sizes(d):
    make_folder(d)
    Image.new("L", (17, 16)).save(d / "train" / "dot" / "wide.png")


def break_one_class(d):
    make_folder(d)
    for name in ("cross", "dot"):
        shutil.rmtree(d / "train" / name)


def break_test_classes(d):
    make_folder(d)
    os.rename(d / "test" / "dot", d / "test" / "dots")


@pytest.mark.parametrize("damage, flags, words", [
    (break_no_class, (), "d/train has no class folders"),
    (break_one_class, (), "d/train has one class folder (circle): a classifier needs two or more"),
    (break_empty_class, (), "d/train/dot has no images (png, jpg"),
    (break_corrupt, (), "cannot read image d/train/cross/5.png (UnidentifiedImageError)"),
    (break_truncated, (), "cannot read image d/train/cross/5.png"),
    (break_truncated, ("--in_memory_gb=0",), "cannot read image d/train/cross/5.png"),
    (break_sizes, (), "d/train/circle/0.png is 16x16 and d/train/dot/wide.png is 16x17 "
                      "(HxW): pass --image_size=HxW"),
    (break_test_classes, ("--is_train=False",),
     "the classes of d/test are not the training classes: missing dot; extra dots"),
    (lambda d: None, (), "no folder d/train"),
    (make_folder, ("--image_size=0x4",), "--image_size must be H or HxW"),
    (make_folder, ("--image_size=32", "--dataset=mnist"), "--image_size applies to"),
])
def test_bad_folders_are_one_line_and_write_nothing(tmp_path, damage, flags, words):
    damage(tmp_path / "d")
    proc = run_main(tmp_path, "--dataset=folder", "--data_dir=d", *flags, *TINY, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("main.py: error: ") and proc.stderr.count("\n") == 1
    assert words in proc.stderr
    assert sorted(os.listdir(tmp_path)) == (["d"] if (tmp_path / "d").exists() else [])
