"""Small helpers: user errors, crash-safe writes, folders, the params json, the sample grid,
reading and checking checkpoints, the random state they keep, torchrun's processes."""
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time

import numpy as np
import torch


class UserError(Exception):
    """A user's mistake (flag, file, checkpoint): main prints it as one line, no traceback."""


def error_exit(line, code):
    """Says a user error once and exits. Under torchrun the error is most often every rank's:
    rank 0 says it and torchrun then stops the other ranks, which wait for that, since one that
    left first would get rank 0 stopped before it spoke. A rank's error of its own is said
    after that wait."""
    if os.environ.get("RANK", "0") != "0":
        try:
            time.sleep(30)
        except KeyboardInterrupt:  # main.py's SIGTERM handler: rank 0 has spoken
            sys.exit(code)
    sys.stderr.write(line + "\n")
    sys.exit(code)


def model_name(config):
    """ram_{T}_{g}x{g}_{s} as the seed names it, then whatever else sets the network or the
    data apart, so that two such runs never share checkpoints or glimpse pickles:
    ram_6_8x8_2 (the seed's), ram_8_12x12_2_k3_translated60, ram_8_12x12_2_k4_cluttered100,
    ram_6_8x8_2_flowers (--dataset=folder --data_dir=.../flowers)."""
    name = "ram_{}_{}x{}_{}".format(config.num_glimpses, config.patch_size, config.patch_size,
                                    config.glimpse_scale)
    if config.num_patches != 1:
        name += f"_k{config.num_patches}"
    if (config.glimpse_hidden, config.loc_hidden) != (128, 128):
        name += f"_h{config.glimpse_hidden}-{config.loc_hidden}"
    if getattr(config, "core", "rnn") != "rnn":
        name += f"_{config.core}"
    dataset = getattr(config, "dataset", "mnist")
    if dataset == "folder":  # the folder's own name: two datasets never share a checkpoint
        folder = os.path.basename(os.path.normpath(os.path.abspath(config.data_dir)))
        name += "_" + "".join(c if c.isalnum() or c in "-." else "_" for c in folder)
    elif dataset != "mnist":
        name += f"_{dataset}{config.canvas_size}"
    if dataset == "cluttered":
        from config import default_clutter
        if config.num_clutter != default_clutter(config.canvas_size):
            name += f"_n{config.num_clutter}"
        if config.clutter_size != 8:
            name += f"_c{config.clutter_size}"
    return name


@contextlib.contextmanager
def signals_held():
    """Holds Ctrl-C and SIGTERM until the block is done, then delivers them. An interrupt
    raised inside torch.save, between its C++ writer's calls back into Python, is replaced by
    the writer's own RuntimeError or lost; a save takes milliseconds, so it is let finish."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals (and may set handlers)
        return
    held = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not None}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in held[:1]:
            signal.raise_signal(s)  # the usual handler now raises KeyboardInterrupt


def atomic_write(path, write):
    """Calls write(file) on a temporary file beside path, flushes it to disk, then renames it
    over path: a crash at any moment leaves the old file or the new one, never half of one,
    and Ctrl-C waits for the write to finish."""
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with signals_held():
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


def save_torch(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj, path):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=4, sort_keys=True).encode()))


def prepare_dirs(*dirs):
    """Creates each folder and checks it is writable, before any work is done."""
    for d in dirs:
        try:
            os.makedirs(d, exist_ok=True)
            with tempfile.TemporaryFile(dir=d):
                pass
        except OSError as e:
            raise UserError(f"cannot write to folder {d!r} ({e.strerror or e}): "
                            "choose another with the matching --*_dir flag") from None


def save_config(config):
    """Writes <ckpt_dir>/<model_name>_params.json, as the seed does."""
    param_path = os.path.join(config.ckpt_dir, model_name(config) + "_params.json")
    print("[*] Model Checkpoint Dir: {}".format(config.ckpt_dir))
    print("[*] Param Path: {}".format(param_path))
    save_json(vars(config), param_path)


def plot_images(images, labels, path):
    """Saves a 3x3 grid of images (9, C, H, W) with their labels as a PNG (headless)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(5, 5))
    for ax, img, y in zip(axes.flat, images, labels):
        img = img.permute(1, 2, 0).squeeze(-1).cpu().numpy()
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_xlabel(str(int(y)))
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(images):]:
        ax.axis("off")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


# settings that change the network's tensors or what a checkpoint's name promises, and the
# data it was trained on (checkpoints from before --dataset existed are mnist's)
ARCH_KEYS = ("patch_size", "num_patches", "glimpse_scale", "glimpse_hidden", "loc_hidden",
             "hidden_size", "num_glimpses")
DATA_KEYS = {"dataset": "mnist", "canvas_size": None, "num_clutter": None,
             "clutter_size": None, "core": "rnn", "image_size": None}


def ckpt_path(config, best):
    suffix = "_model_best.pth.tar" if best else "_ckpt.pth.tar"
    return os.path.join(config.ckpt_dir, model_name(config) + suffix)


def trained_data(ckpt, config):
    """What a checkpoint says of its training data: normalisation, image_shape (C, H, W) and
    classes; a checkpoint from before it said so (the seed's) was trained on --dataset."""
    from data_loader import NORMALISATION
    side = 28 if config.dataset == "mnist" else config.canvas_size
    data = {"normalisation": list(NORMALISATION.get(config.dataset, (0.0, 1.0))),
            "image_shape": [1, side, side], "classes": [str(i) for i in range(10)]}
    data.update(ckpt.get("data", {}))
    return data


def missing_checkpoint(path, config):
    """The error for a checkpoint that is not there, naming the runs that are, with the flags
    that would select them."""
    folder = os.path.dirname(path)
    others = []
    for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        try:
            with open(os.path.join(folder, f)) as fh:
                params = json.load(fh) if f.endswith("_params.json") else None
        except (OSError, ValueError):
            params = None
        if isinstance(params, dict):
            flags = [f"--{k}={v}" for k, v in trained_settings(params).items()
                     if v is not None and v != getattr(config, k)]
            others.append(f"{f[:-len('_params.json')]} ({' '.join(flags) or 'no flag differs'})")
    held = f"; {folder} holds {', '.join(others[:4])}" if others else ""
    return (f"no checkpoint {path}{held}: train first (python main.py), or pass the flags of "
            "the model to use, and --ckpt_dir if it is elsewhere")


def trained_settings(params):
    """The settings in ARCH_KEYS and DATA_KEYS a checkpoint's params say it was made with."""
    trained = {k: params[k] for k in ARCH_KEYS if k in params}
    trained.update({k: params.get(k, old) for k, old in DATA_KEYS.items()})
    return trained


def read_checkpoint(path, device):
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is no checkpoint
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}): "
                        "it is truncated or corrupt") from None
    missing = [k for k in ("epoch", "model_state", "best_valid_acc")
               if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path} is not a RAM checkpoint: it has no {', '.join(missing)}")
    return ckpt


def check_params(ckpt, path, json_path, config):
    """Names the settings that differ from the checkpoint's, from its params (or the json
    beside it, as the seed wrote); a seed checkpoint with neither is checked by shapes."""
    params = ckpt.get("params")
    if params is None and os.path.isfile(json_path):
        try:
            with open(json_path) as f:
                params = json.load(f)
        except (OSError, ValueError):
            params = None
    if not params:
        return
    differ = [f"--{k}={v} (given {getattr(config, k)})"
              for k, v in trained_settings(params).items() if v != getattr(config, k)]
    if differ:
        raise UserError(f"{path} was trained with other settings: {', '.join(differ)}; "
                        "pass those flags to use it")


def check_split(params, path, config):
    """--init_from: a model trained on MNIST's training digits (whichever canvases) keeps its
    train/validation split, or validation would score digits it was trained on."""
    mnist = ("mnist", "translated", "cluttered")
    if not params or params.get("dataset", "mnist") not in mnist or config.dataset not in mnist:
        return
    differ = [f"--{k}={params[k]} (given {getattr(config, k)})"
              for k in ("random_seed", "valid_size", "shuffle")
              if k in params and params[k] != getattr(config, k)]
    if differ:
        raise UserError(f"{path} was trained on another train/validation split of MNIST: "
                        f"{', '.join(differ)}; pass those flags, or validation holds digits "
                        "it was trained on")


def shape_mismatch(path, state, model):
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and v.shape != own[k].shape]
    extra = sorted(set(state) ^ set(own))
    what = "; ".join(bad) + ("; keys differ: " + ", ".join(extra) if extra else "")
    return (f"{path} was made with another configuration (checkpoint vs these flags: {what}); "
            "pass the flags it was trained with")


def world():
    """(rank, number of processes): (0, 1) unless torchrun started this process."""
    import torch.distributed as dist
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def backend():
    import torch.distributed as dist
    return dist.get_backend()


def all_sum(*values, device):
    """Python numbers: the sums of these (numbers or 0-d tensors) over all processes."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if world()[1] > 1:
        import torch.distributed as dist
        dist.all_reduce(t)
    return t.tolist()


def all_gather(obj):
    """[obj of each process], in rank order ([obj] in one process)."""
    if world()[1] == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def rng_state():
    """Every random stream the next epoch draws from, in a form torch.load(weights_only) takes."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def set_rng_state(state):
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])


def adam(parameters, lr, device):
    """Adam, fused into one kernel for all 18 tensors where this torch has it for device."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=device.type in ("cpu", "cuda"))
    except RuntimeError:  # fused Adam on CPU came with torch 2.4
        return torch.optim.Adam(parameters, lr=lr)
