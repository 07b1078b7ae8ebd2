"""The bottom layer, imported by every other file and importing none of them: the user error,
the model's name, crash-safe writes and folders, random states, torchrun's collectives."""
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
import torch.distributed as dist


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
    ram_6_8x8_2_flowers (--dataset=folder --data_dir=.../flowers); a baseline is fc256 or
    convnet, and the data's part as for RAM (convnet_cluttered60)."""
    model = getattr(config, "model", "ram")
    if model == "ram":
        name = "ram_{}_{}x{}_{}".format(config.num_glimpses, config.patch_size,
                                        config.patch_size, config.glimpse_scale)
        if config.num_patches != 1:
            name += f"_k{config.num_patches}"
        if (config.glimpse_hidden, config.loc_hidden) != (128, 128):
            name += f"_h{config.glimpse_hidden}-{config.loc_hidden}"
        if getattr(config, "core", "rnn") != "rnn":
            name += f"_{config.core}"
        if getattr(config, "random_glimpses", False):
            name += "_random"
        if getattr(config, "full_screen", False):
            name += "_full"
    else:
        name = f"fc{config.hidden_size}" if model == "fc" else model
    dataset = getattr(config, "dataset", "mnist")
    if dataset == "folder":  # the folder's own name: two datasets never share a checkpoint
        folder = os.path.basename(os.path.normpath(os.path.abspath(config.data_dir)))
        name += "_" + "".join(c if c.isalnum() or c in "-." else "_" for c in folder)
    elif dataset == "catch":
        name += f"_catch{config.screen_size}"
    elif dataset != "mnist":
        name += f"_{dataset}{config.canvas_size}"
    if dataset == "cluttered":
        if config.num_clutter != default_clutter(config.canvas_size):
            name += f"_n{config.num_clutter}"
        if config.clutter_size != 8:
            name += f"_c{config.clutter_size}"
    return name


def settings(config):
    """The flags' values, as checkpoints and params json keep them (not what the parser noted
    for itself, such as which flags were given)."""
    return {k: v for k, v in vars(config).items() if not k.startswith("_")}


def default_clutter(canvas_size):
    """Clutter pieces per canvas, as in the paper: 4 on 60x60, 8 on 100x100."""
    return 4 if canvas_size < 100 else 8


def parse_size(text):
    """--image_size: 'H' (square) or 'HxW' -> (H, W), or None."""
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"--image_size must be H or HxW in pixels (e.g. 64 or 48x64), "
                        f"got {text!r}")
    return int(parts[0]), int(parts[-1])


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


def world():
    """(rank, number of processes): (0, 1) unless torchrun started this process."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def all_sum(*values, device):
    """Python numbers: the sums of these (numbers or 0-d tensors) over all processes."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_gather(obj):
    """[obj of each process], in rank order ([obj] in one process)."""
    if world()[1] == 1:
        return [obj]
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
