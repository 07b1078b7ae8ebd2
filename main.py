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

import catch
import checkpoint
import data_loader
import image_folder
import runs
import utils
from baselines import BASELINES
from config import check, get_config
from model import ModelConfig, RecurrentAttention, check_derivatives, compiled
from trainer import Trainer, evaluate, initial_location, rollout
from utils import UserError


def main(config):
    device, rank, world = start(config)
    if device.type == "cpu" and not (config.num_runs > 1 and config.is_train):
        torch.set_num_threads(runs.threads(config))
        print(f"[*] {torch.get_num_threads()} CPU thread(s) (--num_threads)")
    if config.compile and device.type == "cpu" and not any(
            shutil.which(c) for c in (os.environ.get("CXX"), "g++", "clang++") if c):
        # inductor would fail at the first batch, deep in a traceback
        raise UserError("--compile=True on CPU needs a C++ compiler (g++, clang++ or $CXX) "
                        "on the PATH: install one, or leave --compile off")
    if config.num_runs > 1 and config.is_train:
        train_runs(config)
    elif config.num_runs > 1:
        runs.test(config, lambda c: test(seeded(c), device, rank, world))
    elif config.predict is not None:
        predict(seeded(config), device, world)
    elif not config.is_train:
        test(seeded(config), device, rank, world)
    else:
        train(seeded(config), device, rank, world)
    finish()


def seeded(config):
    torch.manual_seed(config.random_seed)  # seeds CUDA too
    random.seed(config.random_seed)
    return config


def dataset(config):
    """The module that serves config.dataset's batches (all have the same interface)."""
    return {"folder": image_folder, "catch": catch}.get(config.dataset, data_loader)


def build(config, image_shape, classes, device):
    """The model the flags describe, for images of image_shape (C, H, W) and these classes."""
    C, H, W = image_shape
    print(f"[*] Images of {C} channel{'s' * (C > 1)}, {H}x{W} (HxW), {len(classes)} classes")
    args = ModelConfig.of(vars(config), channels=C, num_classes=len(classes), height=H, width=W,
                          control=config.dataset == "catch")
    model = BASELINES.get(args.model, RecurrentAttention)(args).to(device)
    print("[*] Number of model parameters: {:,}".format(
        sum(p.numel() for p in model.parameters())))
    return model


def train(config, device, rank, world):
    if not config.resume:
        checkpoint.refuse_to_overwrite(config)
    train_loader, valid_loader = dataset(config).get_train_valid_loader(
        config, device, eval_batch_size(config))
    model = build(config, train_loader.image_shape, train_loader.classes, device)
    if isinstance(model, RecurrentAttention):
        check_derivatives(model)  # before anything is written
    if config.init_from and not config.resume:  # a warm restart: before any folder, and DDP
        checkpoint.init_from(model, config.init_from, config, device)
    if rank:  # the same initial weights everywhere, then noise of its own
        torch.manual_seed(config.random_seed + 7919 * rank)
    net = data_parallel(model, train_loader, valid_loader, device, rank, world)
    trainer = Trainer(config, model, train_loader, valid_loader, device, net, master=rank == 0,
                      bar=speaks, quarters=one_of_runs)
    if config.resume:
        checkpoint.resume(trainer, config, device, rank, world)
    plot_dir = os.path.join(config.plot_dir, utils.model_name(config))
    if config.overwrite:  # the old run's glimpses go with it
        for p in glob.glob(os.path.join(plot_dir, "[gly]_*.p")):
            with contextlib.suppress(FileNotFoundError):  # another process's already
                os.remove(p)
    glimpses = config.plot_freq and config.model == "ram"  # a baseline takes none
    utils.prepare_dirs(config.ckpt_dir, *[plot_dir] * bool(glimpses or config.show_sample),
                       *[config.logs_dir] * config.use_tensorboard)
    if config.show_sample and rank == 0:
        import plot_glimpses  # matplotlib, only when drawing
        x, y = next(iter(train_loader))
        path = os.path.join(plot_dir, "sample.png")
        plot_glimpses.plot_images(train_loader.pictures(x[:9]), y[:9], path)
        print("[*] Saved a sample of the data to {}".format(path))
    if world > 1:
        print(f"[*] Training data-parallel on {world} processes "
              f"({torch.distributed.get_backend()}): {config.batch_size} images a batch each, "
              f"{world * config.batch_size} in all")
    try:
        trainer.train()
    except KeyboardInterrupt:
        saved = checkpoint.saved_epoch(config)
        where = (f"epoch {saved} is safely saved in {checkpoint.path(config, best=False)}; "
                 f"resume with {resume_command()}" if saved else "no epoch had been saved yet")
        say(f"\n[!] Interrupted: {where}")
        sys.exit(128 + stopped_by)


def train_runs(config):
    """--num_runs: each run in a process of its own (run_one), then their summary."""
    try:
        runs.train(config, run_one)
    except KeyboardInterrupt:
        saved = ", ".join(f"seed {c.random_seed}: {checkpoint.saved_epoch(c) or 'none'}"
                          for c in runs.configs(config))
        say(f"\n[!] Interrupted: the epochs saved are {saved}; resume them all with "
            f"{resume_command()}")
        sys.exit(128 + stopped_by)


def run_one(config):
    """One of --num_runs' runs, in its own process: main() on it, as on a single run; its
    Ctrl-C and errors are said once, for all the runs, by the process that started them."""
    global speaks, one_of_runs
    speaks, one_of_runs = False, True
    signal.signal(signal.SIGTERM, on_sigterm)
    main(config)


def data_parallel(model, train_loader, valid_loader, device, rank, world):
    """What training runs, given rank and world: each process serves its share of the data
    (as DistributedSampler) and, with more than one, trains through DDP's wrapper of model."""
    train_loader.shard(rank, world, pad=True)
    valid_loader.shard(rank, world, pad=False)
    if world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None)


def trained_model(config, device, image_shape, classes):
    """The checkpoint the flags name, loaded into the model they describe: (model, data,
    the checkpoint's best validation accuracy)."""
    checkpoint.choose(config, config.best)
    ckpt, file = checkpoint.load(config, device, best=config.best)
    data = checkpoint.trained_data(ckpt, checkpoint.params(ckpt, config))
    for what, trained, given in (("classes", data["classes"], classes),
                                 ("CxHxW", data["image_shape"], image_shape)):
        if given is not None and list(trained) != list(given):
            raise UserError(f"the test set's {what} ({fmt(given)}) are not the model's "
                            f"({fmt(trained)}): test on data like its training data")
    model = build(config, data["image_shape"], data["classes"], device)
    checkpoint.load_weights(model, ckpt["model_state"], file)
    checkpoint.loaded(file, ckpt, config.ckpt_dir)
    return model.eval(), data, ckpt["best_valid_acc"]


def test(config, device, rank, world):
    checkpoint.choose(config, config.best)  # the run it announces lends its data too
    loader = dataset(config).get_test_loader(config, device, eval_batch_size(config))
    loader.shard(rank, world, pad=False)
    model, data, valid_acc = trained_model(config, device, loader.image_shape, loader.classes)
    loader.normalisation = tuple(data["normalisation"])  # its training data's statistics
    run = compiled(rollout, device) if config.compile else rollout
    _, acc, correct = evaluate(run, model, loader, config.M, config.init_loc, device)
    metric = getattr(loader, "metric", "Acc")
    print("[*] Test {}: {}/{} ({:.2f}%)".format(metric, correct, loader.num_samples, acc))
    if model.config.control:  # the rate while training samples its actions, as ports report
        model.greedy = False
        _, acc_s, correct_s = evaluate(run, model, loader, config.M, config.init_loc, device)
        print("[*] Test {}, actions sampled: {}/{} ({:.2f}%)".format(
            metric, correct_s, loader.num_samples, acc_s))
        if not model.config.full_screen:
            held, frames = utils.all_sum(*loader.tracked(model, lambda n: initial_location(
                n, config.init_loc, device)), device=device)
            print(f"[*] Ball in the smallest patch: {held:.0f}/{frames:.0f} frames "
                  f"({100 * held / frames:.2f}%)")
    return correct, loader.num_samples, valid_acc


def predict(config, device, world):
    """--predict: for each image, its file, the predicted class and that class's probability
    averaged over M rollouts; then the first 9 images' glimpses as a GIF."""
    if world > 1:  # each process would print its shard alone
        raise UserError("--predict runs in one process: use python main.py, not torchrun")
    model, data, _ = trained_model(config, device, None, None)
    loader, files, unreadable = image_folder.predict(config.predict, data,
                                                     eval_batch_size(config), config, device)
    for line in unreadable:  # said first, then the rest classified, then the exit code
        print(f"main.py: error: {line}", file=sys.stderr)
    names, glimpses, said = iter(files), None, []
    with torch.no_grad():
        for x, _ in loader:
            l_0 = initial_location(config.M * len(x), config.init_loc, device)
            out, p = probabilities(model, x, l_0)
            if glimpses is None:
                glimpses = loader.pictures(x[:9]).cpu().numpy(), out.locs[:9].cpu().numpy()
            for prob, k in zip(*p.max(1)):
                name = next(names)
                print(f"{name}\t{data['classes'][k]}\t{prob:.4f}")
                said.append((f"{os.path.basename(name)}\n{data['classes'][k]} ({prob:.2f})",
                             "black"))
    if glimpses[1].shape[1]:  # a baseline has no glimpses to draw
        try:
            draw_predictions(config, model, glimpses, said[:9])
        except (OSError, UserError) as e:  # the predictions stand without their picture
            say(f"main.py: warning: the glimpses were not drawn: {e}")
    if unreadable:
        raise UserError(f"{len(unreadable)} of {len(files) + len(unreadable)} images could not "
                        "be read (each named above); the others are classified")


def draw_predictions(config, model, glimpses, titles):
    import plot_glimpses  # matplotlib, only when drawing
    plot_dir = os.path.join(config.plot_dir, utils.model_name(config))
    gif, png = (os.path.join(plot_dir, f"predict.{e}") for e in ("gif", "png"))
    utils.prepare_dirs(plot_dir)
    sensor = model.config
    plot_glimpses.animate(*glimpses, sensor.patch_size, sensor.num_patches,
                          sensor.glimpse_scale, gif, png, titles)
    n = len(glimpses[0])
    say(f"[*] Saved the glimpses of {n} image{'s' * (n > 1)} to {gif}")


def probabilities(model, x, l_0):
    """(Rollout, p): p (B, classes) the class probabilities after T glimpses, averaged over
    M = len(l_0) / B rollouts per image (probabilities, where the seed's test averages
    log-probabilities: a prediction's probability should be one)."""
    out = model(x, l_0)
    return out, out.log_probas.exp().view(-1, len(x), out.log_probas.shape[1]).mean(0)


def fmt(values):
    return "x".join(map(str, values)) if all(isinstance(v, int) for v in values) else \
        ", ".join(map(str, values))


def start(config):
    """(device, rank, world): decided once, here. Under torchrun (RANK set), also the process
    group, as nanoGPT's train.py: NCCL with each process on cuda:LOCAL_RANK, or gloo on CPU."""
    cuda = config.use_gpu and torch.cuda.is_available()
    if "RANK" not in os.environ:
        return torch.device("cuda" if cuda else "cpu"), 0, 1
    if config.compile:
        raise UserError("--compile=True does not run under torchrun yet: leave it off there")
    device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    # device_id: NCCL binds this rank to its GPU now (without it, it guesses from the rank)
    torch.distributed.init_process_group("nccl" if cuda else "gloo",
                                         device_id=device if cuda else None)
    return device, *utils.world()


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


speaks = True  # under torchrun, rank 0 alone (set at start-up)
one_of_runs = False  # a --num_runs run's process: its progress in lines, not a bar


def say(message):
    if speaks:
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
    speaks = os.environ.get("RANK", "0") == "0"
    if not speaks:
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
