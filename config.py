"""Command-line flags: the seed's names, groups and spelling (--flag=True); defaults are the
seed's published run (ram_6_8x8_2). A typo or a bad value is one error line, not a traceback."""
import argparse
import difflib
import math
import os

import catch
from utils import UserError, default_clutter, error_exit, parse_size

DATASETS = ("mnist", "translated", "cluttered", "folder", "catch")
CANVAS_FLAGS = ("canvas_size", "num_clutter", "clutter_size")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints the whole usage first; one line that names the problem is enough
        if message.startswith("unrecognized arguments"):
            flags = [o for a in self._actions for o in a.option_strings]
            typos = [w.split("=")[0] for w in message.split(": ", 1)[1].split()]
            close = [m for t in typos for m in difflib.get_close_matches(t, flags, 1)]
            if close:
                message += f"; did you mean {', '.join(close)}?"
        error_exit(f"{self.prog}: error: {message} (see --help)", 2)


class Removed(argparse.Action):
    """A seed flag that did nothing: say so instead of 'unrecognized argument'."""

    def __init__(self, option_strings, dest, why, **kwargs):
        self.why = why
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was removed: {self.why}")


def str2bool(v):
    if v.lower() in ("true", "1"):
        return True
    if v.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True, False, 1 or 0, got {v!r}")


str2bool.__name__ = "boolean"  # argparse names the type in its message


class Defaults(argparse.HelpFormatter):
    """--help gives each flag's default, except where the help text says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def make_parser(description="RAM: Recurrent Attention Model (Mnih et al. 2014)"):
    """main.py's flags, grouped as the seed groups them (bench.py adds its own)."""
    parser = Parser(description=description, formatter_class=Defaults,
                    allow_abbrev=False)  # --epoch must not silently mean --epochs

    parser.add_argument("--model", choices=("ram", "fc", "convnet", "smallcnn"), default="ram",
                        help="ram: the Recurrent Attention Model; fc, convnet: the paper's "
                             "baselines, trained by the same loop (fc: 2 layers of "
                             "--hidden_size rectifier units; convnet: 8 filters of 10x10 at "
                             "stride 5, then 256 rectifier units); smallcnn: a modern small "
                             "convnet (4 3x3 convolutions with batch norm, 2 max-pools, the "
                             "average over positions)")

    glimpse_arg = parser.add_argument_group("Glimpse Network Params")
    glimpse_arg.add_argument("--patch_size", type=int, default=8,
                             help="size g of the extracted patch at highest res")
    glimpse_arg.add_argument("--glimpse_scale", type=int, default=2,
                             help="scale s of successive patches")
    glimpse_arg.add_argument("--num_patches", type=int, default=1,
                             help="# k of downscaled patches per glimpse")
    glimpse_arg.add_argument("--loc_hidden", type=int, default=128, help="hidden size of loc fc")
    glimpse_arg.add_argument("--glimpse_hidden", type=int, default=128,
                             help="hidden size of glimpse fc")

    core_arg = parser.add_argument_group("Core Network Params")
    core_arg.add_argument("--num_glimpses", type=int, default=6,
                          help="# of glimpses T, i.e. BPTT iterations")
    core_arg.add_argument("--hidden_size", type=int, default=256,
                          help="hidden size of rnn (= glimpse_hidden + loc_hidden)")
    core_arg.add_argument("--core", choices=("rnn", "lstm"), default="rnn",
                          help="rnn: the paper's rectifier core for classification, h_t = "
                               "relu(i2h(g_t) + h2h(h_{t-1})); lstm: an LSTM cell (slower: "
                               "trained through autograd)")

    reinforce_arg = parser.add_argument_group("Reinforce Params")
    reinforce_arg.add_argument("--std", type=float, default=0.17,
                               help="gaussian policy standard deviation")
    reinforce_arg.add_argument("--M", type=int, default=10,
                               help="Monte Carlo sampling for valid and test sets (RAM's: the "
                                    "baselines are deterministic and take 1)")
    reinforce_arg.add_argument("--random_glimpses", type=str2bool, default=False,
                               help="RAM glimpses at uniformly random places instead of where "
                                    "its policy says (the paper's \"random glimpses\" rows): "
                                    "what the learned policy is worth")
    reinforce_arg.add_argument("--full_screen", type=str2bool, default=False,
                               help="the whole image every step, not a glimpse (Catch's "
                                    "full-screen agent)")
    reinforce_arg.add_argument("--init_loc", choices=("random", "center"), default="random",
                               help="first glimpse location: uniform in [-1, 1]^2 (the seed) "
                                    "or the image centre")

    data_arg = parser.add_argument_group("Data Params")
    data_arg.add_argument("--dataset", choices=DATASETS, default="mnist",
                          help="mnist: the 28x28 digits; translated: each digit at a random place "
                               "on an empty canvas; cluttered: the same plus clutter pieces cut "
                               "from other digits (the paper's tasks); folder: your own labelled "
                               "images in --data_dir (DATA/train/<class>/<image>, DATA/test/...); "
                               "catch: the paper's game, played from the reward alone (its "
                               "own defaults for the flags not given: catch.CATCH_DEFAULTS)")
    data_arg.add_argument("--canvas_size", type=int, default=None,
                          help="side of the translated or cluttered canvas (default 60)")
    data_arg.add_argument("--num_clutter", type=int, default=None,
                          help="clutter pieces per cluttered canvas (default 4 below a 100 px "
                               "canvas, 8 from 100 px, as in the paper)")
    data_arg.add_argument("--clutter_size", type=int, default=None,
                          help="side of a clutter piece (default 8)")
    data_arg.add_argument("--screen_size", type=int, default=None,
                          help="--dataset=catch: side of the game's screen (default 24, the "
                               "paper's); an episode is screen_size - 1 steps")
    data_arg.add_argument("--image_size", type=str, default=None,
                          help="--dataset=folder: resize every image to H or HxW pixels (default: "
                               "the images' own size, which they must then share)")
    data_arg.add_argument("--in_memory_gb", type=float, default=4.0,
                          help="--dataset=folder: a split whose decoded images (uint8) take at "
                               "most this many GB is decoded once into memory; a larger one is "
                               "decoded every epoch by --num_workers processes")
    data_arg.add_argument("--valid_size", type=float, default=0.1,
                          help="Proportion of training set used for validation")
    data_arg.add_argument("--batch_size", type=int, default=32,
                          help="# of images in each batch of data, per process under torchrun "
                               "(the effective batch is nproc x batch_size)")
    data_arg.add_argument("--num_workers", type=int, default=4,
                          help="# of loader subprocesses for datasets decoded per image "
                               "(MNIST is decoded once into memory and needs none)")
    data_arg.add_argument("--shuffle", type=str2bool, default=True,
                          help="Whether to shuffle the train and valid indices")
    data_arg.add_argument("--show_sample", type=str2bool, default=False,
                          help="Whether to save a sample grid of the data in plot_dir")

    train_arg = parser.add_argument_group("Training Params")
    train_arg.add_argument("--is_train", type=str2bool, default=True,
                           help="Whether to train or test the model")
    train_arg.add_argument("--predict", type=str, default=None,
                           help="with --is_train=False: classify this image file, or every image "
                                "in this folder, printing file, class and probability")
    train_arg.add_argument("--momentum", action=Removed, nargs="?",
                           why="the optimizer is Adam, which never used it")
    train_arg.add_argument("--epochs", type=int, default=200,
                           help="# of epochs to train for, in total (a resumed run included)")
    train_arg.add_argument("--init_lr", type=float, default=3e-4,
                           help="Initial learning rate value")
    train_arg.add_argument("--lr_patience", type=int, default=10,
                           help="Number of epochs to wait before reducing lr")
    train_arg.add_argument("--lr_decay", type=float, default=1,
                           help="below 1: multiply the learning rate by this after every epoch "
                                "(tfRAM: 0.98), ignoring --lr_patience; 1: the seed's schedule, "
                                "x0.1 after --lr_patience epochs without a better validation")
    train_arg.add_argument("--max_grad_norm", type=float, default=0,
                           help="clip the gradient's norm over all parameters to this before each "
                                "step (0: no clipping, as the seed)")
    train_arg.add_argument("--ema_decay", type=float, default=0,
                           help="validate, keep and test an exponential moving average of the "
                                "weights with this decay per step (0: the weights themselves, as "
                                "the seed; 0.999 averages over about 1,000 steps)")
    train_arg.add_argument("--init_from", type=str, default=None,
                           help="start training from the weights of this checkpoint file (a "
                                "shipped model, say): a new run, with a new optimizer, schedule "
                                "and epoch count (ignored with --resume=True, which continues a "
                                "run)")
    train_arg.add_argument("--train_patience", type=int, default=50,
                           help="Number of epochs to wait before stopping train")
    train_arg.add_argument("--overwrite", type=str2bool, default=False,
                           help="start over, replacing the checkpoints of an earlier run of the "
                                "same model in --ckpt_dir (without it, training refuses to)")
    train_arg.add_argument("--autograd", type=str2bool, default=False,
                           help="backpropagate through the glimpse loop by autograd, not its "
                                "written-out derivative: slower, but an edited network needs none")

    misc_arg = parser.add_argument_group("Misc.")
    misc_arg.add_argument("--use_gpu", type=str2bool, default=True,
                          help="Whether to run on the GPU (when there is one)")
    misc_arg.add_argument("--best", type=str2bool, default=True,
                          help="Load best model or most recent for testing")
    misc_arg.add_argument("--random_seed", type=int, default=1,
                          help="Seed to ensure reproducibility")
    misc_arg.add_argument("--data_dir", type=str, default="./data",
                          help="Directory in which data is stored")
    misc_arg.add_argument("--ckpt_dir", type=str, default="./ckpt",
                          help="Directory in which to save model checkpoints")
    misc_arg.add_argument("--logs_dir", type=str, default=None,
                          help="Directory in which Tensorboard logs wil be stored (default: "
                               "./logs/, or <ckpt_dir>/logs for another --ckpt_dir)")
    misc_arg.add_argument("--use_tensorboard", type=str2bool, default=False,
                          help="Whether to use tensorboard for visualization")
    misc_arg.add_argument("--resume", type=str2bool, default=False,
                          help="Whether to resume training from checkpoint")
    misc_arg.add_argument("--print_freq", type=int, default=10,
                          help="How frequently (in batches) to update the progress bar (and "
                               "look for a non-finite loss)")
    misc_arg.add_argument("--plot_freq", type=int, default=1,
                          help="How frequently (in epochs) to save glimpses (0: never)")
    misc_arg.add_argument("--plot_dir", type=str, default=None,
                          help="Directory in which glimpse pickles and plots are stored (default: "
                               "./plots/, or <ckpt_dir>/plots for another --ckpt_dir: a run's "
                               "pictures are its own)")
    misc_arg.add_argument("--num_runs", type=int, default=1,
                          help="train (or test) N independent runs, seeds --random_seed to "
                               "--random_seed+N-1, side by side in processes of their own, each "
                               "in <ckpt_dir>/seed<S> (plots and logs likewise); then each run's "
                               "best validation (or test) figure, and their mean and sd")
    misc_arg.add_argument("--num_threads", type=int, default=None,
                          help="CPU threads per run (default: the cores idle at start, by the "
                               "load average, shared among the runs; at least 1)")
    misc_arg.add_argument("--compile", type=str2bool, default=False,
                          help="torch.compile the rollout and its loss (costs start-up time)")
    return parser


parser = make_parser()


def check(config):
    """Raises UserError on values the model or trainer cannot run with."""
    positive = ("patch_size", "num_glimpses", "batch_size", "M", "num_patches", "epochs",
                "loc_hidden", "glimpse_hidden", "hidden_size", "print_freq", "num_runs")
    for name in positive:
        if getattr(config, name) <= 0:
            raise UserError(f"--{name} must be a positive integer, got {getattr(config, name)}")
    for name in ("num_workers", "lr_patience", "train_patience", "plot_freq"):
        if getattr(config, name) < 0:
            raise UserError(f"--{name} must be 0 or more, got {getattr(config, name)}")
    if config.num_patches > 1 and config.glimpse_scale < 1:
        raise UserError(f"--glimpse_scale must be at least 1 with --num_patches="
                        f"{config.num_patches}, got {config.glimpse_scale}")
    for name in ("std", "init_lr", "lr_decay", "valid_size", "max_grad_norm"):
        if not math.isfinite(getattr(config, name)):
            raise UserError(f"--{name} must be a finite number, got {getattr(config, name)}")
    if not config.std > 0:
        raise UserError(f"--std must be positive, got {config.std}")
    if not 0 <= config.valid_size < 1:
        raise UserError(f"--valid_size must be in [0, 1), got {config.valid_size}")
    if not config.max_grad_norm >= 0:
        raise UserError(f"--max_grad_norm must be 0 (off) or positive, got {config.max_grad_norm}")
    if not 0 <= config.ema_decay < 1:
        raise UserError(f"--ema_decay must be in [0, 1), got {config.ema_decay}")
    if not 0 < config.lr_decay <= 1:
        raise UserError(f"--lr_decay must be in (0, 1], got {config.lr_decay}")
    if not config.init_lr > 0:
        raise UserError(f"--init_lr must be positive, got {config.init_lr}")
    if config.model != "ram":  # deterministic: one run per image
        for flag in ("random_glimpses", "full_screen"):
            if getattr(config, flag):
                raise UserError(f"--{flag} is RAM's: --model={config.model} has no glimpses")
        config.M = 1
    elif config.hidden_size != config.glimpse_hidden + config.loc_hidden:
        raise UserError(f"--hidden_size ({config.hidden_size}) must equal --glimpse_hidden + "
                        f"--loc_hidden ({config.glimpse_hidden} + {config.loc_hidden})")
    if config.resume and config.overwrite:
        raise UserError("--resume=True continues a run and --overwrite=True starts it over: "
                        "pass one of them")
    if config.num_threads is not None and config.num_threads <= 0:
        raise UserError(f"--num_threads must be a positive integer, got {config.num_threads}")
    if config.num_runs > 1 and "RANK" in os.environ:
        raise UserError("--num_runs trains its runs in processes of its own: run it with "
                        "python main.py, not torchrun")
    if config.predict is not None and config.num_runs > 1:
        raise UserError("--predict classifies with one model: pass the run's own folder "
                        "instead of --num_runs (--ckpt_dir=<ckpt_dir>/seed<S> --random_seed=S)")
    if config.is_train and os.path.isfile(config.ckpt_dir):
        raise UserError(f"--ckpt_dir={config.ckpt_dir} is a file: training writes to a folder "
                        "(a checkpoint file is for --is_train=False, or --init_from)")
    if config.predict is not None and config.is_train:
        raise UserError("--predict classifies with a trained model: pass --is_train=False too")
    check_data(config)


def check_data(config):
    """Checks the dataset flags and fills in their defaults (None where they do not apply)."""
    if not config.in_memory_gb >= 0:
        raise UserError(f"--in_memory_gb must be 0 or more, got {config.in_memory_gb}")
    if config.image_size is not None:
        if config.dataset != "folder":
            raise UserError("--image_size applies to --dataset=folder (MNIST and the canvases "
                            "have their own sizes)")
        parse_size(config.image_size)
    if config.screen_size is not None and config.dataset != "catch":
        raise UserError("--screen_size applies to --dataset=catch")
    given = [f"--{f}" for f in CANVAS_FLAGS if getattr(config, f) is not None]
    if given and config.dataset in ("mnist", "folder", "catch"):
        raise UserError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} only to "
                        "--dataset=translated or cluttered")
    if config.dataset == "catch":
        return catch.check_flags(config)
    if config.dataset in ("mnist", "folder"):
        return
    if config.dataset == "translated" and config.num_clutter:
        raise UserError("--num_clutter is for --dataset=cluttered: translated canvases have none")
    if config.canvas_size is None:
        config.canvas_size = 60
    if config.clutter_size is None:
        config.clutter_size = 8
    if config.num_clutter is None:
        config.num_clutter = 0 if config.dataset == "translated" else default_clutter(
            config.canvas_size)
    if config.canvas_size < 28:
        raise UserError(f"--canvas_size must be at least 28 (a whole digit), got "
                        f"{config.canvas_size}")
    if config.num_clutter < 0:
        raise UserError(f"--num_clutter must be 0 or more, got {config.num_clutter}")
    if not 1 <= config.clutter_size <= 28:
        raise UserError(f"--clutter_size must be in 1..28 (a crop of a digit), got "
                        f"{config.clutter_size}")


def get_config(argv=None):
    config = parser.parse_args(argv)
    del config.momentum
    config._given = given(argv)
    return folders(config)


def folders(config):
    """--plot_dir and --logs_dir where not given: the seed's for the seed's --ckpt_dir, else
    beside the checkpoints, so that two runs with the same settings in two folders never share
    their glimpses or logs."""
    # --predict draws with a model, not a run: into ./plots, not the model's folder
    beside = os.path.normpath(config.ckpt_dir) != "ckpt" and config.predict is None
    # --ckpt_dir may name a checkpoint file (to test or predict with it): its folder's
    base = os.path.dirname(config.ckpt_dir) if os.path.isfile(config.ckpt_dir) else \
        config.ckpt_dir
    for flag, folder in (("plot_dir", "plots"), ("logs_dir", "logs")):
        if getattr(config, flag) is None:
            setattr(config, flag, os.path.join(base, folder) if beside else f"./{folder}/")
    return config


def given(argv=None):
    """The names of the flags on the command line (not those left at their defaults)."""
    quiet = make_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv))) - {"momentum"}
