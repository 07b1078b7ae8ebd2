"""What a run writes and reads back: checkpoints, the params json, the glimpse pickles.

A checkpoint is the seed's dict (epoch, model_state, optim_state, best_valid_acc) and more:
scheduler_state, counter, rng_states (every process's), params (the flags), model_args (the
ModelConfig), data (what it was trained on); with --ema_decay, train_state and ema_steps.
Every file is written to a temporary file and renamed: a crash leaves the old or the new one.
"""
import json
import os
import pickle
import warnings

import torch

import utils
from model import ModelConfig
from utils import UserError

# what a checkpoint says of its data; one without a record is the seed's: MNIST 28x28
DATA_FLAGS = ("dataset", "canvas_size", "num_clutter", "clutter_size", "image_size",
              "screen_size")
SEED_DATA = {**dict.fromkeys(DATA_FLAGS), "dataset": "mnist", "normalisation": [0.1307, 0.3081],
             "image_shape": [1, 28, 28], "classes": [str(i) for i in range(10)]}


def run_file(config, suffix):
    return os.path.join(config.ckpt_dir, utils.model_name(config) + suffix)


def path(config, best):
    if getattr(config, "_file", None):  # --ckpt_dir named a checkpoint file itself
        return config._file
    return run_file(config, "_model_best.pth.tar" if best else "_ckpt.pth.tar")


# ------------------------------------------------------------------------------- writing
def data_record(config, loader):
    """The checkpoint's data: the data flags, and the loader's normalisation, shape, classes."""
    record = {k: getattr(config, k) for k in DATA_FLAGS}
    record.update(normalisation=list(loader.normalisation),
                  image_shape=list(loader.image_shape), classes=list(loader.classes))
    return record


def save_config(config):
    """Writes <ckpt_dir>/<model_name>_params.json, as the seed does."""
    print("[*] Model Checkpoint Dir: {}".format(config.ckpt_dir))
    file = run_file(config, "_params.json")
    print("[*] Param Path: {}".format(file))
    utils.save_json(utils.settings(config), file)


def save_epoch(state, config, is_best, glimpses=None, plot_dir=None):
    """The epoch's checkpoint (and the best one, on a new best), then its glimpse pickles, as
    one step: Ctrl-C waits for all of them, so that an interrupted epoch leaves none."""
    with utils.signals_held():
        utils.save_torch(state, path(config, best=False))
        if is_best:
            utils.save_torch(state, path(config, best=True))
        save_history(state["history"], run_file(config, "_history.csv"))
        if glimpses is not None:
            save_glimpses(plot_dir, state["epoch"], *glimpses, utils.settings(config))


def save_history(rows, file):
    """<name>_history.csv: the run's epochs so far, as its latest checkpoint holds them (a
    resumed run's are its checkpoint's, then its own). No validation: its cells are empty."""
    keys = ("epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "seconds")
    lines = [",".join(keys)] + [",".join("" if r[k] is None else repr(r[k]) for k in keys)
                                for r in rows]
    utils.atomic_write(file, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def save_glimpses(plot_dir, epoch, imgs, locs, classes, predicted, params):
    """g_<epoch>.p: [the 9 images]; l_<epoch>.p: T arrays (9, 2), where glimpses 1..T were
    taken (l_0 first), in [-1, 1], as the seed's; y_<epoch>.p: (their classes, the model's
    predictions); and params.json, the run's settings, for plot_glimpses.py."""
    imgs = [imgs.squeeze(1) if imgs.shape[1] == 1 else imgs]
    locs = list(locs.transpose(1, 0, 2))
    for name, obj in ((f"g_{epoch}.p", imgs), (f"l_{epoch}.p", locs),
                      (f"y_{epoch}.p", (classes, predicted))):
        utils.atomic_write(os.path.join(plot_dir, name), lambda f: pickle.dump(obj, f))
    utils.save_json(params, os.path.join(plot_dir, "params.json"))


def refuse_to_overwrite(config):
    """A fresh run never replaces another run's checkpoints unless told to start over."""
    found = [p for p in (path(config, False), path(config, True)) if os.path.exists(p)]
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


# ------------------------------------------------------------------------------- reading
def read(file, device):
    try:
        # torch can warn of a broken file before it raises: the one line below says it all
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(file, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is no checkpoint
        raise UserError(f"{file} is not a readable checkpoint ({type(e).__name__}): "
                        "it is truncated or corrupt") from None
    missing = [k for k in ("epoch", "model_state", "best_valid_acc")
               if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{file} is not a RAM checkpoint: it has no {', '.join(missing)}")
    return ckpt


def saved_epoch(config):
    """The epoch the latest checkpoint on disk holds (None if none): read from the file, not
    remembered, so that an interrupt in the middle of saving cannot make it wrong."""
    try:
        return torch.load(path(config, False), map_location="cpu", weights_only=True)["epoch"]
    except Exception:
        return None


def load(config, device, best):
    """This run's checkpoint, checked against the flags: (ckpt, path)."""
    file = path(config, best)
    if not os.path.isfile(file):
        raise UserError(missing(file, config))
    ckpt = read(file, device)
    check(ckpt, file, config)
    return ckpt, file


def params(ckpt, config):
    """The flags a checkpoint was trained with: its own, else the json the seed left beside
    it, else None (the seed's checkpoint alone: checked by its tensors' shapes)."""
    if ckpt.get("params"):
        return ckpt["params"]
    try:
        with open(run_file(config, "_params.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def trained_data(ckpt, settings=None):
    """What a checkpoint says of its training data (SEED_DATA's keys); none says: the seed's."""
    data = dict(SEED_DATA)
    data.update({k: settings[k] for k in DATA_FLAGS if k in (settings or {})})
    data.update(ckpt.get("data") or {})
    return data


def trained_settings(ckpt, settings):
    """{flag: value} of the network and the data a checkpoint was trained with."""
    # a checkpoint from before a flag existed was trained with its default
    trained = ModelConfig.of(ckpt.get("model_args") or settings or {}).network()
    data = trained_data(ckpt, settings)
    trained.update({k: data[k] for k in DATA_FLAGS})
    return trained


def check(ckpt, file, config):
    """Names the flags whose values differ from those the checkpoint was trained with."""
    settings = params(ckpt, config)
    if settings is None and not ckpt.get("model_args"):
        return
    differ = [f"--{k}={v} (given {getattr(config, k)})"
              for k, v in trained_settings(ckpt, settings).items() if v != getattr(config, k)]
    if differ:
        raise UserError(f"{file} was trained with other settings: {', '.join(differ)}; "
                        "pass those flags to use it")


def saved_runs(folder):
    """[(name, {flag: value} of its network and data)] for each run whose params json is in
    folder, by name."""
    found = []
    for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not f.endswith("_params.json"):
            continue
        try:
            with open(os.path.join(folder, f)) as fh:
                settings = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(settings, dict):
            run = trained_settings({}, settings)
            if run["dataset"] == "folder":  # its name is its folder's: testing reads that one
                run["data_dir"] = settings.get("data_dir")
            found.append((f[:-len("_params.json")], run))
    return found


def choose(config, best):
    """Testing or --predict: the run to use. The flags' own checkpoint, if it is there, as in
    the seed; else the one run in --ckpt_dir that agrees with every network and data flag
    given, whose settings are then taken for the rest (so that the flags needed are only those
    that tell its runs apart). Sets config's flags to that run's. A checkpoint file given as
    --ckpt_dir is the run: its own settings are taken."""
    if getattr(config, "_file", None):
        return
    if os.path.isfile(config.ckpt_dir):
        ckpt = read(config.ckpt_dir, "cpu")
        lend(config, trained_settings(ckpt, ckpt.get("params")), ckpt.get("params") or {})
        config._file = config.ckpt_dir
        print(f"[*] Using {config.ckpt_dir}, with the settings it was trained with")
        return
    if os.path.isfile(path(config, best)):
        return
    # --model counts as given (RAM unless a baseline is named, as in training); a network flag
    # given that a run does not have (--num_glimpses for a convnet) rules it out
    given = getattr(config, "_given", set()) & (set(ModelConfig().network()) | set(DATA_FLAGS))
    given.add("model")
    if config.model == "ram":  # and its learned policy and retina unless others are named
        given.update(("random_glimpses", "full_screen"))
    unsaid = {"full_screen": False}  # what a run saved before the flag existed ran with
    fits = [(name, s) for name, s in saved_runs(config.ckpt_dir)
            if all(s.get(k, unsaid.get(k, ())) == getattr(config, k) for k in given)]
    if len(fits) > 1:
        raise UserError(f"{config.ckpt_dir} holds {len(fits)} runs that fit these flags: "
                        f"{listing(fits, config)}; pass the flags of the one to use")
    if fits:
        name, settings = fits[0]
        lend(config, settings, settings)
        print(f"[*] Using {name}, the run in {config.ckpt_dir} that fits the flags given")


def lend(config, settings, trained):
    """A chosen run's network and data settings onto config; a folder run's --data_dir too,
    unless one was given (its name is its folder's)."""
    for k, v in settings.items():
        if k != "data_dir":
            setattr(config, k, v)
    if settings.get("dataset") == "folder" and trained.get("data_dir") and \
            "data_dir" not in getattr(config, "_given", set()):
        config.data_dir = trained["data_dir"]


def listing(runs, config):
    """Each run's name and the flags that would select it, where they differ from config."""
    def flags(s):
        return " ".join(f"--{k}={v}" for k, v in s.items()
                        if v is not None and v != getattr(config, k))
    return ", ".join(f"{name} ({flags(s) or 'no flag differs'})" for name, s in runs)


def missing(file, config):
    """The error for a checkpoint that is not there, naming every run that is, with the flags
    that would select it."""
    folder = os.path.dirname(file)
    runs = saved_runs(folder)
    held = f"; {folder} holds {listing(runs, config)}" if runs else ""
    named = {f"{n}{s}" for n, _ in runs for s in ("_model_best.pth.tar", "_ckpt.pth.tar")}
    loose = sorted(f for f in os.listdir(folder) if f.endswith((".pth.tar", ".pth", ".pt"))
                   and f not in named) if os.path.isdir(folder) else []
    if loose:  # a checkpoint renamed or without its json: its path is enough
        held += (f"; it holds {', '.join(loose)}: pass --ckpt_dir="
                 f"{os.path.join(folder, loose[0])} to use that file")
    return (f"no checkpoint {file}{held}: train first (python main.py), or pass the flags of "
            "the model to use, and --ckpt_dir if it is elsewhere")


def load_weights(model, state, file):
    try:
        model.load_state_dict(state)
    except RuntimeError:
        own = model.state_dict()
        bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
               if k in own and v.shape != own[k].shape]
        extra = sorted(set(state) ^ set(own))
        what = "; ".join(bad) + ("; keys differ: " + ", ".join(extra) if extra else "")
        raise UserError(f"{file} was made with another configuration (checkpoint vs these "
                        f"flags: {what}); pass the flags it was trained with") from None


def loaded(file, ckpt, where):
    print("[*] Loading model from {}".format(where))
    print("[*] Loaded {} checkpoint @ epoch {} with best valid acc of {:.3f}".format(
        os.path.basename(file), ckpt["epoch"], ckpt["best_valid_acc"]))


# ------------------------------------------------------------------------------- new runs
def init_from(model, file, config, device):
    """--init_from: FILE's weights into model, for a new run (fine-tuning, a warm restart)."""
    if not os.path.isfile(file):
        raise UserError(f"--init_from: no checkpoint {file}")
    ckpt = read(file, device)
    check_split(ckpt.get("params"), file, config)
    load_weights(model, ckpt["model_state"], file)
    loaded(file, ckpt, file)


def check_split(settings, file, config):
    """--init_from: a model trained on MNIST's training digits (whichever canvases) keeps its
    train/validation split, or validation would score digits it was trained on."""
    mnist = ("mnist", "translated", "cluttered")
    if not settings or settings.get("dataset", "mnist") not in mnist or \
            config.dataset not in mnist:
        return
    differ = [f"--{k}={settings[k]} (given {getattr(config, k)})"
              for k in ("random_seed", "valid_size", "shuffle")
              if k in settings and settings[k] != getattr(config, k)]
    if differ:
        raise UserError(f"{file} was trained on another train/validation split of MNIST: "
                        f"{', '.join(differ)}; pass those flags, or validation holds digits "
                        "it was trained on")


# what a resumed run may change: its length, patience and where and how it runs and reports;
# every other flag is the run's own (its schedule, batches, noise, model and data)
RESUME_MAY_CHANGE = {"epochs", "train_patience", "resume", "overwrite", "is_train", "best",
                     "print_freq", "plot_freq", "use_tensorboard", "show_sample", "logs_dir",
                     "plot_dir", "ckpt_dir", "data_dir", "num_workers", "in_memory_gb",
                     "num_threads", "num_runs", "use_gpu", "compile", "init_from", "predict"}


def resume(trainer, config, device, rank, world):
    """Everything the next epoch depends on, from this run's latest checkpoint."""
    ckpt, file = load(config, device, best=False)
    trained = ckpt.get("params") or {}
    differ = [f"--{k}={v} (given {getattr(config, k)})" for k, v in trained.items()
              if k not in RESUME_MAY_CHANGE and hasattr(config, k) and v != getattr(config, k)]
    if differ:  # a resumed run goes on as it was, or its record would tell of another run
        raise UserError(f"{file} was trained with {', '.join(differ)}: a resumed run "
                        "continues as it was, so resume with those, or start a new run from "
                        "its weights with --init_from")
    if ckpt["epoch"] >= config.epochs:
        raise UserError(f"the checkpoint has {ckpt['epoch']} epochs and --epochs="
                        f"{config.epochs} is the total: pass a larger --epochs")
    load_weights(trainer.model, ckpt.get("train_state", ckpt["model_state"]), file)
    trainer.optimizer.load_state_dict(ckpt["optim_state"])
    if "scheduler_state" in ckpt:
        trainer.scheduler.load_state_dict(ckpt["scheduler_state"])
    if trainer.ema:  # a checkpoint without one starts its average from model_state
        trainer.ema.module.load_state_dict(ckpt["model_state"])
        trainer.ema.n_averaged.fill_(ckpt.get("ema_steps", 0))
    trainer.start_epoch, trainer.best_valid_acc = ckpt["epoch"], ckpt["best_valid_acc"]
    trainer.counter = ckpt.get("counter", 0)
    trainer.history = list(ckpt.get("history", []))
    states = ckpt.get("rng_states") or [ckpt.get("rng_state")]
    if len(states) == world and states[0] is not None:
        utils.set_rng_state(states[rank])
    elif world > 1:  # another number of processes: a stream of its own each
        utils.set_rng_state(states[0])
        torch.manual_seed(config.random_seed + 7919 * rank + ckpt["epoch"])
    loaded(file, ckpt, config.ckpt_dir)
