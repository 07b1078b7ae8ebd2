"""Train or test the Recurrent Attention Model (Mnih et al. 2014).

    python main.py                     # train with the seed's published settings on MNIST
    python main.py --resume=True       # continue from <ckpt_dir>/<model_name>_ckpt.pth.tar
    python main.py --is_train=False    # test <ckpt_dir>/<model_name>_model_best.pth.tar
    python main.py --dataset=cluttered --canvas_size=60 --patch_size=12 --num_patches=3 \
        --num_glimpses=8               # one of the paper's harder tasks
    python main.py --dataset=folder --data_dir=DATA   # your images: DATA/{train,test}/<class>/
    python main.py --is_train=False --predict=x.png   # classify images with the trained model

Every flag: python main.py --help. A mistake (flag, file, checkpoint) ends with one line on
stderr and exit code 1 (2 for a flag argparse rejects); Ctrl-C (or SIGTERM) stops training at
once, saying which epoch is saved, with exit code 130 (143).
"""
import contextlib
import gc
import glob
import os
import random
import shlex
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
    device = start(config)
    torch.manual_seed(config.random_seed)  # seeds CUDA too
    random.seed(config.random_seed)
    plot_dir = os.path.join(config.plot_dir, utils.model_name(config))
    if config.compile and device.type == "cpu" and not any(
            shutil.which(c) for c in (os.environ.get("CXX"), "g++", "clang++") if c):
        # inductor would fail at the first batch, deep in a traceback
        raise UserError("--compile=True on CPU needs a C++ compiler (g++, clang++ or $CXX) "
                        "on the PATH: install one, or leave --compile off")

    if config.predict is not None:
        predict(config, device, plot_dir)
        return
    if not config.is_train:
        test_loader = data_loader.get_test_loader(config, device, eval_batch_size(config))
        Trainer(config, device, test_loader=test_loader).test()
        finish()
        return

    if not config.resume:
        refuse_to_overwrite(config)
    train_loader, valid_loader = data_loader.get_train_valid_loader(config, device,
                                                                    eval_batch_size(config))
    if config.overwrite:  # the old run's glimpses go with it
        for p in glob.glob(os.path.join(plot_dir, "[gl]_*.p")):
            with contextlib.suppress(FileNotFoundError):  # another process's already
                os.remove(p)
    dirs = [config.ckpt_dir] + ([plot_dir] if config.plot_freq or config.show_sample else []) \
        + ([config.logs_dir] if config.use_tensorboard else [])
    utils.prepare_dirs(*dirs)
    if config.show_sample and MASTER:
        x, y = next(iter(train_loader))
        path = os.path.join(plot_dir, "sample.png")
        utils.plot_images(train_loader.pictures(x[:9]), y[:9], path)
        print("[*] Saved a sample of the data to {}".format(path))
    trainer = Trainer(config, device, train_loader, valid_loader)
    try:
        trainer.train()
        finish()
    except KeyboardInterrupt:
        saved = trainer.saved_epoch()
        where = (f"epoch {saved} is safely saved in {trainer.ckpt_path(best=False)}; resume "
                 f"with {resume_command()}" if saved else "no epoch had been saved yet")
        say(f"\n[!] Interrupted: {where}")
        sys.exit(128 + stopped_by)


def predict(config, device, plot_dir):
    """--predict: one line per image, then the first 9 images' glimpses as a GIF."""
    import image_folder
    import plot_glimpses
    if torch.distributed.is_initialized():  # each process would print its shard alone
        raise UserError("--predict runs in one process: use python main.py, not torchrun")
    path = utils.ckpt_path(config, best=config.best)
    if not os.path.isfile(path):
        raise UserError(utils.missing_checkpoint(path, config))
    # read before the model exists: its channels, classes and image size come from here
    data = utils.trained_data(utils.read_checkpoint(path, "cpu"), config)
    loader, files = image_folder.predict(config.predict, data, eval_batch_size(config), config,
                                         device)
    trainer = Trainer(config, device, test_loader=loader)
    trainer.predict(files)
    imgs, locs = trainer.glimpses
    gif, png = (os.path.join(plot_dir, f"predict.{e}") for e in ("gif", "png"))
    utils.prepare_dirs(plot_dir)
    plot_glimpses.animate(imgs, locs, config.patch_size, config.num_patches,
                          config.glimpse_scale, gif, png)
    say(f"[*] Saved the glimpses of {len(imgs)} image{'s' * (len(imgs) > 1)} to {gif}")


def start(config):
    """The device. Under torchrun (RANK set), also the process group, as nanoGPT's train.py:
    NCCL with each process on cuda:LOCAL_RANK, or gloo on CPU."""
    cuda = config.use_gpu and torch.cuda.is_available()
    if "RANK" not in os.environ:
        return torch.device("cuda" if cuda else "cpu")
    if config.compile:
        raise UserError("--compile=True does not run under torchrun yet: leave it off there")
    device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    # device_id: NCCL binds this rank to its GPU now (without it, it guesses from the rank)
    torch.distributed.init_process_group("nccl" if cuda else "gloo",
                                         device_id=device if cuda else None)
    return device


def refuse_to_overwrite(config):
    """A fresh run never replaces another run's checkpoints unless told to start over."""
    name = utils.model_name(config)
    paths = [os.path.join(config.ckpt_dir, name + s)
             for s in ("_ckpt.pth.tar", "_model_best.pth.tar")]
    found = [p for p in paths if os.path.exists(p)]
    if not found or config.overwrite:
        return
    try:
        ckpt = torch.load(found[0], map_location="cpu", weights_only=True)
        what = f"epoch {ckpt['epoch']}, best valid acc {ckpt['best_valid_acc']:.3f}%"
    except Exception:
        what = "unreadable"
    raise UserError(f"{found[0]} holds an earlier run ({what}): continue it with "
                    "--resume=True, train elsewhere with --ckpt_dir=DIR, or start over "
                    "with --overwrite=True")


def resume_command():
    """The command line that continues this run: its own flags, with --resume=True."""
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:  # the value of "--resume True"
            skip = False
        elif a.split("=")[0] in ("--resume", "--overwrite"):
            skip = "=" not in a
        else:
            args.append(a)
    launch = "python"
    if "RANK" in os.environ:  # torchrun's own flags are not ours to see, but on one node
        nproc = os.environ["LOCAL_WORLD_SIZE"]
        launch = f"torchrun --standalone --nproc_per_node={nproc}" if nproc == \
            os.environ["WORLD_SIZE"] else "torchrun (its flags as before)"
    return f"{launch} {shlex.join(['main.py', *args, '--resume=True'])}"


stopped_by = signal.SIGINT


def finish():
    """Under torchrun, wait for every process before the group is torn down: a process that
    left while another's last collective was still in flight aborted gloo (seen once)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


MASTER = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone speaks


def say(message):
    if MASTER:
        print(message, file=sys.stderr)


def on_sigterm(signum, frame):
    """A scheduler's or kill's SIGTERM stops training like Ctrl-C does."""
    global stopped_by
    stopped_by = signum
    raise KeyboardInterrupt


def eval_batch_size(config):
    """Images per validation/test batch: each is run M times, and large batches are cheap
    without autograd, so aim at about 4096 rows (the M copies share one padded image)."""
    return max(config.batch_size, 4096 // config.M)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)
    if not MASTER:
        sys.stdout = open(os.devnull, "w")
    config = get_config()
    try:
        check(config)
        main(config)
    except UserError as e:
        utils.error_exit(f"main.py: error: {e}", 1)
    except BrokenPipeError:  # --predict ... | head: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:  # before training started: nothing to save
        say("\n[!] Interrupted")
        sys.exit(128 + stopped_by)
    finally:
        if torch.distributed.is_initialized():
            # DDP and the trainer sit in reference cycles: free them while the group lives, or
            # one may go at interpreter exit and abort the process (SIGABRT, now and then)
            gc.collect()
            torch.distributed.destroy_process_group()
