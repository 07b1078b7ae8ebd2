"""Train or test the Recurrent Attention Model (Mnih et al. 2014) on MNIST.

    python main.py                     # train with the seed's published settings
    python main.py --resume=True       # continue from <ckpt_dir>/<model_name>_ckpt.pth.tar
    python main.py --is_train=False    # test <ckpt_dir>/<model_name>_model_best.pth.tar

Every flag: python main.py --help. A mistake (flag, file, checkpoint) ends with one line on
stderr and exit code 1 (2 for a flag argparse rejects); Ctrl-C (or SIGTERM) stops training at
once, saying which epoch is saved, with exit code 130 (143).
"""
import os
import random
import shutil
import signal
import sys

import torch

import data_loader
import utils
from config import check, get_config
from trainer import Trainer
from utils import UserError


def main(config):
    device = torch.device("cuda" if config.use_gpu and torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.random_seed)  # seeds CUDA too
    random.seed(config.random_seed)
    plot_dir = os.path.join(config.plot_dir, utils.model_name(config))
    if config.compile and device.type == "cpu" and not any(
            shutil.which(c) for c in (os.environ.get("CXX"), "g++", "clang++") if c):
        # inductor would fail at the first batch, deep in a traceback
        raise UserError("--compile=True on CPU needs a C++ compiler (g++, clang++ or $CXX) "
                        "on the PATH: install one, or leave --compile off")

    if not config.is_train:
        test_loader = data_loader.get_test_loader(config.data_dir, eval_batch_size(config),
                                                  device)
        Trainer(config, device, test_loader=test_loader).test()
        return

    train_loader, valid_loader = data_loader.get_train_valid_loader(
        config.data_dir, config.batch_size, config.random_seed, config.valid_size,
        config.shuffle, device, eval_batch_size(config))
    dirs = [config.ckpt_dir, plot_dir] + ([config.logs_dir] if config.use_tensorboard else [])
    utils.prepare_dirs(*dirs)
    if config.show_sample:
        x, y = next(iter(train_loader))
        path = os.path.join(plot_dir, "sample.png")
        utils.plot_images(x[:9] * data_loader.STD + data_loader.MEAN, y[:9], path)
        print("[*] Saved a sample of the data to {}".format(path))
    trainer = Trainer(config, device, train_loader, valid_loader)
    try:
        trainer.train()
    except KeyboardInterrupt:
        saved = trainer.saved_epoch()
        where = (f"epoch {saved} is safely saved in {trainer.ckpt_path(best=False)}; resume with "
                 "python main.py --resume=True" if saved else "no epoch had been saved yet")
        print(f"\n[!] Interrupted: {where}", file=sys.stderr)
        sys.exit(128 + stopped_by)


stopped_by = signal.SIGINT


def on_sigterm(signum, frame):
    """A scheduler's or kill's SIGTERM stops training like Ctrl-C does."""
    global stopped_by
    stopped_by = signum
    raise KeyboardInterrupt


def eval_batch_size(config):
    """Images per validation/test batch: each is run M times, and large batches are cheap
    without autograd, so aim at about 4096 rows."""
    return max(config.batch_size, 4096 // config.M)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)
    config = get_config()
    try:
        check(config)
        main(config)
    except UserError as e:
        print(f"main.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # before training started: nothing to save
        print("\n[!] Interrupted", file=sys.stderr)
        sys.exit(128 + stopped_by)
