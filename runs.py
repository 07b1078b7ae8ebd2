"""--num_runs=N: N independent runs of one command, side by side, each in a process of its own.

    python main.py --num_runs=3                    # seeds 1, 2, 3 in ckpt/seed1 ... ckpt/seed3
    python main.py --num_runs=3 --resume=True      # continue all three
    python main.py --num_runs=3 --is_train=False   # test each, then mean and sd of the error
    python main.py --is_train=False --ckpt_dir=ckpt/seed2 --random_seed=2   # one of them

Run r is the single run with --random_seed + r, written where that run would write, one folder
down (<ckpt_dir>/seed<S>, <plot_dir>/seed<S>, <logs_dir>/seed<S>): the same initial weights,
split, batches, canvases and policy noise, so anything that works on a single run works on it.
On a CPU, runs go in processes of their own, the idle cores shared out among them (a run at batch
32 cannot use many threads, and stacking runs' products in one process gained nothing).
"""
import copy
import math
import multiprocessing
import os
import signal
import statistics
import sys

import torch

import checkpoint
from utils import UserError

RUN_MEMORY = 1.5e9  # bytes one run's process may hold at most (torch, data, canvases)


def cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def threads(config):
    """CPU threads for each run of a command: --num_threads, else the cores idle at start (the
    load average counts the busy ones) shared out among its runs, at least one each. At batch
    32 a second thread pays when it has a core to itself and costs several times over when it
    has to share one."""
    if config.num_threads:
        return config.num_threads
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    at_once = config.num_runs if config.is_train else 1  # tests run one after another
    return max(1, (cores() - busy) // at_once)


def run_config(config, r):
    """The settings of run r: the single run with seed --random_seed + r, one folder down."""
    c = copy.copy(config)
    c.random_seed, c.num_runs = config.random_seed + r, 1
    for k in ("ckpt_dir", "plot_dir", "logs_dir"):
        setattr(c, k, os.path.join(getattr(config, k), f"seed{c.random_seed}"))
    return c


def configs(config):
    """The settings of each of the command's runs."""
    return [run_config(config, r) for r in range(config.num_runs)]


def check_memory(n):
    """Refuses more runs than this machine's free memory holds, before any starts."""
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f
                        if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return
    if n * RUN_MEMORY > free:
        raise UserError(f"--num_runs={n} needs up to {n * RUN_MEMORY / 1e9:.1f} GB "
                        f"({RUN_MEMORY / 1e9:.1f} GB a run) and {free / 1e9:.1f} GB is free: "
                        f"train at most {max(1, int(free // RUN_MEMORY))} at once")


class Prefixed:
    """A text stream that starts each line with prefix: the runs share one terminal. Whole
    lines only, each in one write: print() writes its text and its newline apart, and another
    run's line written between them would end up inside this one's."""

    def __init__(self, stream, prefix):
        self.stream, self.prefix, self.pending = stream, prefix, ""

    def write(self, text):
        *lines, self.pending = (self.pending + text).split("\n")
        if lines:
            self.stream.write("".join(self.prefix * bool(line.strip()) + line + "\n"
                                      for line in lines))
            self.stream.flush()
        return len(text)

    def flush(self):
        self.stream.flush()


def _child(target, config, n_threads, i, results):
    torch.set_num_threads(n_threads)
    sys.stdout = Prefixed(sys.stdout, f"[seed {config.random_seed}] ")
    try:
        results.put((i, True, target(config)))
    except UserError as e:
        results.put((i, False, str(e)))
        sys.exit(1)
    except KeyboardInterrupt:  # a second signal while the first was being handled
        sys.exit(128 + signal.SIGINT)
    except BrokenPipeError:  # ... | head: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno())
        results.put((i, False, "its output was closed by the reader (a pipe)"))
        sys.exit(1)


def in_processes(target, configs, n_threads):
    """[target(c) for c in configs], each in a spawned process of n_threads threads. A
    UserError in any is raised here, each message once; Ctrl-C (or SIGTERM) stops them all."""
    ctx = multiprocessing.get_context("spawn")  # fork under a live OpenMP pool can hang
    results = ctx.SimpleQueue()
    procs = [ctx.Process(target=_child, args=(target, c, n_threads, i, results))
             for i, c in enumerate(configs)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        stop(procs)
        raise
    got = {}
    while not results.empty():
        i, ok, value = results.get()
        got[i] = (ok, value)
    errors = {}
    for i, (c, p) in enumerate(zip(configs, procs)):
        ok, value = got.get(i, (False, f"its process ended with exit code {p.exitcode}"))
        if not ok:
            errors.setdefault(value, []).append(c.random_seed)
    if len(errors) == 1 and len(next(iter(errors.values()))) == len(configs):
        raise UserError(next(iter(errors)))  # every run's: the command's own mistake
    if errors:
        raise UserError("; ".join(f"seed {', '.join(map(str, seeds))}: {e}"
                                  for e, seeds in errors.items()))
    return [got[i][1] for i in range(len(configs))]


def stop(procs):
    """After Ctrl-C or SIGTERM here: each run stops as at SIGTERM (a terminal's Ctrl-C reached
    them already, a kill of this process did not); the epochs they saved are whole."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join()
    signal.signal(signal.SIGINT, previous)


def mean_sd(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def train(config, target):
    """Trains every run (target(run's config) in its process), then one line per run: its
    best epoch and validation accuracy, and their mean and sd. Selection stays on validation."""
    runs = configs(config)
    check_memory(len(runs))
    for c in runs:  # a mistake common to all said once, before anything starts
        if config.resume:
            checkpoint.load(c, "cpu", best=False)
        else:
            checkpoint.refuse_to_overwrite(c)
    n = threads(config)
    for c in runs:
        c.num_threads = n
    print(f"[*] Training {len(runs)} runs, seeds {runs[0].random_seed} to "
          f"{runs[-1].random_seed}, in {os.path.join(config.ckpt_dir, 'seed<S>')}: a process "
          f"each, {n} thread{'s' * (n > 1)} each, on {cores()} cores")
    in_processes(target, runs, n)
    best = []
    for c in runs:
        ckpt = checkpoint.read(checkpoint.path(c, best=True), "cpu")
        best.append(ckpt["best_valid_acc"])
        print(f"[*] seed {c.random_seed}: best epoch {ckpt['epoch']}, best valid acc "
              f"{ckpt['best_valid_acc']:.3f}%")
    print("[*] {} runs: best valid acc {:.3f}% ± {:.3f} (mean ± sd)".format(
        len(runs), *mean_sd(best)))


def test(config, target):
    """Tests every run in this process (target(run's config) -> (correct, n, best valid
    acc)), then the test error's mean and sd and the run validation chooses."""
    runs = configs(config)
    results = []
    for c in runs:
        print(f"\n[*] seed {c.random_seed}: {c.ckpt_dir}")
        results.append(target(c))
    errors = [100 * (1 - correct / n) for correct, n, _ in results]
    print("\n[*] Test error over {} runs: {:.2f}% ± {:.2f} (mean ± sd; {})".format(
        len(runs), *mean_sd(errors), ", ".join(f"{e:.2f}" for e in errors)))
    chosen = max(range(len(runs)), key=lambda i: results[i][2])
    print(f"[*] Chosen on validation: seed {runs[chosen].random_seed} (best valid acc "
          f"{results[chosen][2]:.3f}%), test error {errors[chosen]:.2f}%")
