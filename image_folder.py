"""Your own labelled images (--dataset=folder), in torchvision's ImageFolder layout:

    DATA/train/<class>/<image>    the classes are train's folder names, in sorted order
    DATA/valid/<class>/<image>    optional: without it, --valid_size of train (the seed's split)
    DATA/test/<class>/<image>     the same classes as train

    python main.py --dataset=folder --data_dir=DATA --image_size=64 --patch_size=12
    python main.py --dataset=folder --data_dir=DATA --is_train=False --predict=photo.png

Any image PIL reads (png, jpg, bmp, ...). Channels come from the data: 1 when every image is
greyscale, else 3 (RGB; alpha dropped). --image_size (H or HxW) resizes them all; without it
they must all have one size. A split whose decoded images (uint8) take at most --in_memory_gb
is decoded once, by --num_workers processes, into one tensor on the training device and served
by index like MNIST; a larger one is decoded every epoch by --num_workers processes.
Normalisation: each channel's mean and std over the training images (all of them in memory;
a fixed sample of STATS_SAMPLE when streaming), kept in the checkpoint for test and predict.
"""
import os

import numpy as np
import torch
from tqdm import tqdm

import utils
from data_loader import Batches, split_indices
from utils import UserError, parse_size

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif",
              ".tiff", ".webp")
GREY = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
STATS_SAMPLE = 10_000
DECODE_BATCH = 256


def list_images(folder):
    """The image files under folder, at any depth, in sorted order (hidden ones skipped)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if not f.startswith(".") and f.lower().endswith(EXTENSIONS)]
    return found


def class_folders(folder):
    return sorted(d.name for d in os.scandir(folder) if d.is_dir() and not d.name.startswith("."))


def scan(root, split, classes=None):
    """(files, labels, class names) of root/split/<class>/...; classes: those it must have."""
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise UserError(f"no folder {folder}: --dataset=folder reads DATA/train/<class>/<image>"
                        " and DATA/test/<class>/<image> (--data_dir=DATA)")
    found = class_folders(folder)
    if not found:
        raise UserError(f"{folder} has no class folders: put each class's images in "
                        f"{os.path.join(folder, '<class name>')}")
    if classes is None and len(found) == 1:  # it would learn that everything is that class
        raise UserError(f"{folder} has one class folder ({found[0]}): a classifier needs two "
                        "or more")
    if classes is not None and found != list(classes):
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise UserError(f"the classes of {folder} are not the training classes: " + "; ".join(
            [f"missing {', '.join(missing)}"] * bool(missing)
            + [f"extra {', '.join(extra)}"] * bool(extra)))
    files, labels = [], []
    for k, name in enumerate(found):
        images = list_images(os.path.join(folder, name))
        if not images:
            raise UserError(f"{os.path.join(folder, name)} has no images "
                            f"({', '.join(e[1:] for e in EXTENSIONS)})")
        files += images
        labels += [k] * len(images)
    return files, labels, found


def bad_image(path, e):
    return (f"cannot read image {path} ({type(e).__name__}): it is corrupt or not an image; "
            "remove or replace it")


def inspect(files, image_size, master=True):
    """(channels, (H, W)) of files from their headers alone: 3 if any image has colour, and
    image_size or the one size they all have."""
    from PIL import Image
    channels, sizes = 1, {}
    for path in tqdm(files, desc="reading headers", leave=False,
                     disable=len(files) < 5000 or not master):
        try:
            with Image.open(path) as im:
                mode, (w, h) = im.mode, im.size
        except Exception as e:
            raise UserError(bad_image(path, e)) from None
        channels = max(channels, 1 if mode in GREY else 3)
        sizes.setdefault((h, w), path)
        if image_size is None and len(sizes) > 1:
            (a, pa), (b, pb) = sizes.items()
            raise UserError(f"the images differ in size: {pa} is {a[0]}x{a[1]} and {pb} is "
                            f"{b[0]}x{b[1]} (HxW): pass --image_size=HxW to resize them all")
    return channels, image_size or next(iter(sizes))


class Decoded(torch.utils.data.Dataset):
    """files[i] as uint8 (C, H, W): converted to grey (C=1) or RGB, resized to size (H, W)
    where it differs. An unreadable file gives its error line (a str) instead: the main
    process raises it, since a worker's exception would come back as a traceback."""

    def __init__(self, files, channels, size):
        self.files, self.channels, self.size = files, channels, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        H, W = self.size
        try:
            with Image.open(self.files[i]) as im:
                im = im.convert("L" if self.channels == 1 else "RGB")
                if im.size != (W, H):
                    im = im.resize((W, H), Image.BILINEAR)
                a = np.array(im, dtype=np.uint8)
        except Exception as e:
            return bad_image(self.files[i], e)
        t = torch.from_numpy(a)
        return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def collate(items):
    errors = [x for x in items if isinstance(x, str)]
    return errors[0] if errors else torch.stack(items)


def decode(dataset, batches, workers, device, desc=None):
    """Yields the uint8 images of each list of indices in batches, read by workers processes."""
    # a few images need no worker pool, and more workers than cores only contend
    workers = min(workers, len(batches), len(os.sched_getaffinity(0)))
    # a generator of its own: the workers' seed would otherwise be drawn from the global
    # stream, and the policy's noise would differ between streamed and in-memory training
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                         collate_fn=collate, pin_memory=device.type == "cuda",
                                         generator=torch.Generator())
    with tqdm(total=sum(map(len, batches)), desc=desc, leave=False,
              disable=desc is None) as bar:
        for x in loader:
            if isinstance(x, str):
                raise UserError(x)
            bar.update(len(x))
            yield x.to(device, non_blocking=True)


class Streamed(Batches):
    """Batches of images decoded from their files as they are served (a folder too large for
    memory): the same order, shards and normalisation as Batches over a tensor."""

    def __init__(self, dataset, labels, indices, batch_size, workers, device, **kwargs):
        self.dataset, self.workers, self.device = dataset, workers, device
        # no images tensor: the labels stand in for it (Batches takes only its device)
        super().__init__(labels, labels, indices, batch_size, **kwargs)

    @property
    def image_shape(self):
        return (self.dataset.channels, *self.dataset.size)

    def __iter__(self):
        order = self.order()
        batches = [self.indices[order[i:i + self.batch_size]]
                   for i in range(0, len(order), self.batch_size)]
        for p, x in zip(batches, decode(self.dataset, [b.tolist() for b in batches],
                                        self.workers, self.device)):
            yield self.normalise(x), self.labels[p]


def load(files, labels, channels, size, config, device, master=True):
    """(images, labels): images a uint8 tensor on device when it fits in --in_memory_gb,
    else the Decoded dataset to stream from."""
    dataset = Decoded(files, channels, size)
    labels = torch.tensor(labels, dtype=torch.long, device=device)
    if len(files) * channels * size[0] * size[1] > config.in_memory_gb * 2**30:
        return dataset, labels
    images = torch.empty(len(files), channels, *size, dtype=torch.uint8, device=device)
    chunks = [list(range(i, min(i + DECODE_BATCH, len(files))))
              for i in range(0, len(files), DECODE_BATCH)]
    desc = f"decoding {len(files)} images" if len(files) >= 5000 and master else None
    for chunk, x in zip(chunks, decode(dataset, chunks, config.num_workers, device, desc)):
        images[chunk[0]:chunk[-1] + 1] = x
    return images, labels


def statistics(images, indices, device, seed):
    """([mean], [std]) per channel over images[indices] / 255, in float64 (a sample of
    STATS_SAMPLE when the images are streamed)."""
    indices = torch.as_tensor(indices, dtype=torch.long)
    if isinstance(images, Decoded) and len(indices) > STATS_SAMPLE:
        g = torch.Generator().manual_seed(seed)
        indices = indices[torch.randperm(len(indices), generator=g)[:STATS_SAMPLE]].sort()[0]
    chunks = indices.split(DECODE_BATCH)
    if isinstance(images, Decoded):
        xs = decode(images, [c.tolist() for c in chunks], 0, device)
    else:
        xs = (images[c.to(images.device)] for c in chunks)
    total = None
    for x in xs:
        x = x.double().div_(255).transpose(0, 1).flatten(1)  # (C, pixels)
        s = torch.stack([x.sum(1), (x * x).sum(1), torch.full_like(x[:, 0], x.shape[1])])
        total = s if total is None else total + s
    mean = total[0] / total[2]
    std = (total[1] / total[2] - mean**2).clamp(min=0).sqrt().clamp(min=1e-6)
    return mean.tolist(), std.tolist()


def batches(images, labels, indices, batch_size, config, device, train, normalisation,
            classes):
    kwargs = dict(shuffle=train, seed=config.random_seed, normalisation=normalisation)
    if isinstance(images, Decoded):
        out = Streamed(images, labels, indices, batch_size, config.num_workers, device,
                       **kwargs)
    else:
        out = Batches(images, labels, indices, batch_size, **kwargs)
    out.classes = list(classes)
    return out


def get_train_valid_loader(config, device, eval_batch_size=None):
    """(train, valid) batches of config.data_dir's train (and valid) folders."""
    eval_batch_size = eval_batch_size or config.batch_size
    master = utils.world()[0] == 0
    files, labels, classes = scan(config.data_dir, "train")
    num_train = len(files)
    own_valid = os.path.isdir(os.path.join(config.data_dir, "valid"))
    if own_valid:
        more, more_labels, _ = scan(config.data_dir, "valid", classes)
        files, labels = files + more, labels + more_labels
    if master:
        shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} in all)"
                                           if len(classes) > 20 else "")
        print(f"[*] {config.data_dir}: {len(classes)} classes, in this order: {shown}")
    channels, size = inspect(files, parse_size(config.image_size), master)
    images, labels = load(files, labels, channels, size, config, device, master)
    if own_valid:
        train_idx, valid_idx = range(num_train), range(num_train, len(files))
    else:
        train_idx, valid_idx = split_indices(num_train, config.valid_size, config.random_seed,
                                             config.shuffle)
    normalisation = statistics(images, train_idx, device, config.random_seed)
    return tuple(batches(images, labels, idx, bs, config, device, train, normalisation, classes)
                 for idx, bs, train in ((train_idx, config.batch_size, True),
                                        (valid_idx, eval_batch_size, False)))


def get_test_loader(config, device, batch_size):
    """Batches of config.data_dir's test folder, its classes in train's order (main.test then
    normalises them by the checkpoint's statistics)."""
    train = os.path.join(config.data_dir, "train")
    classes = class_folders(train) if os.path.isdir(train) else None
    files, labels, classes = scan(config.data_dir, "test", classes)
    channels, size = inspect(files, parse_size(config.image_size))
    images, labels = load(files, labels, channels, size, config, device)
    return batches(images, labels, range(len(files)), batch_size, config, device, False,
                   (0.0, 1.0), classes)


def predict(path, data, batch_size, config, device):
    """(batches, files, unreadable) of the image file path, or of every image under the
    folder path, in the form the model was trained on (data: the checkpoint's image_shape,
    classes). One unreadable file is the error; in a folder, each one's error line is in
    unreadable, and the rest are classified."""
    files = [path] if os.path.isfile(path) else list_images(path)
    if not files:
        raise UserError(f"--predict={path}: " + (
            "no such file or folder" if not os.path.exists(path) else
            f"no images there ({', '.join(e[1:] for e in EXTENSIONS)})"))
    C, H, W = data["image_shape"]
    dataset = Decoded(files, C, (H, W))
    decoded = [dataset[i] for i in range(len(files))]  # every file read before any is printed
    unreadable = [x for x in decoded if isinstance(x, str)]
    if len(unreadable) == len(files):
        raise UserError(unreadable[0] if len(files) == 1 else
                        f"--predict={path}: none of its {len(files)} images can be read "
                        f"({unreadable[0]})")
    kept = [f for f, x in zip(files, decoded) if not isinstance(x, str)]
    images = torch.stack([x for x in decoded if not isinstance(x, str)]).to(device)
    labels = torch.zeros(len(kept), dtype=torch.long, device=device)
    return batches(images, labels, range(len(kept)), batch_size, config, device, False,
                   data["normalisation"], data["classes"]), kept, unreadable
