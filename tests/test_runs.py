"""--num_runs: run r of N is the single run with seed --random_seed + r, bit for bit; all N
resume exactly; the summary lines; one line for a mistake common to all runs; a kill stops all."""
import io
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import runs
from conftest import ROOT, TINY, make_config, run_main
from utils import UserError

NAME = "ram_6_8x8_2"


def test_run_r_is_the_single_run_with_seed_plus_r_one_folder_down():
    c = make_config("--num_runs=3", "--random_seed=5", "--ckpt_dir=out", "--plot_dir=pics")
    r2 = runs.run_config(c, 2)
    assert (r2.random_seed, r2.num_runs) == (7, 1)
    assert (r2.ckpt_dir, r2.plot_dir, r2.logs_dir) == (
        os.path.join("out", "seed7"), os.path.join("pics", "seed7"),
        os.path.join(c.logs_dir, "seed7"))
    assert (c.random_seed, c.num_runs, c.ckpt_dir) == (5, 3, "out")  # the command's untouched


def test_threads_share_the_idle_cores(monkeypatch):
    monkeypatch.setattr(runs, "cores", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.2, 0, 0))
    assert runs.threads(make_config()) == 6
    assert runs.threads(make_config("--num_runs=3")) == 2
    assert runs.threads(make_config("--num_runs=3", "--is_train=False")) == 6  # one at a time
    assert runs.threads(make_config("--num_runs=16")) == 1
    assert runs.threads(make_config("--num_runs=3", "--num_threads=4")) == 4
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0, 0))  # a busy machine: one each
    assert runs.threads(make_config()) == 1


def test_more_runs_than_memory_holds_are_refused():
    with pytest.raises(UserError, match=r"--num_runs=100000 needs .* GB .* train at most \d+"):
        runs.check_memory(100000)
    runs.check_memory(1)


def test_each_line_of_a_run_starts_with_its_prefix():
    out = io.StringIO()
    p = runs.Prefixed(out, "[seed 2] ")
    p.write("\nEpoch: 1/2")
    p.write(" - LR: 0.1\ntrain loss: 1\nval")
    assert out.getvalue() == "\n[seed 2] Epoch: 1/2 - LR: 0.1\n[seed 2] train loss: 1\n"
    p.write(" acc")  # a line is written whole: another run's cannot land inside it
    assert out.getvalue().endswith("train loss: 1\n")
    p.write("\n")
    assert out.getvalue().endswith("[seed 2] train loss: 1\n[seed 2] val acc\n")


def test_mean_and_sd_are_the_sample_ones():
    mean, sd = runs.mean_sd([1.0, 2.0, 4.0])
    # squared deviations 16/9 + 1/9 + 25/9, over n - 1 = 2
    assert mean == pytest.approx(7 / 3) and sd == pytest.approx((7 / 3) ** 0.5)


def states(folder, best=False):
    ckpt = torch.load(os.path.join(folder, f"{NAME}_{'model_best' if best else 'ckpt'}.pth.tar"),
                      weights_only=True)
    return ckpt


def assert_same_run(a, b):
    """Two checkpoints of the same run at the same epoch: every tensor bit for bit."""
    assert a["epoch"] == b["epoch"] and a["best_valid_acc"] == b["best_valid_acc"]
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    for s, t in zip(a["optim_state"]["state"].values(), b["optim_state"]["state"].values()):
        assert all(torch.equal(s[k], t[k]) for k in s)
    assert torch.equal(a["rng_state"]["torch"], b["rng_state"]["torch"])


@pytest.mark.slow
def test_runs_are_single_runs_and_resume_exactly(workdir):
    """Both runs of --num_runs=2 for 1 epoch, resumed to 2: run seed 2 is then bit for bit
    `--random_seed=2` trained 2 epochs straight (a resume that lost any state, or a run that
    drew another seed's numbers, would differ); then each run's test line and the summary."""
    flags = ("--num_threads=1", *TINY)
    run_main(workdir, "--num_runs=2", "--epochs=1", *flags)
    out = run_main(workdir, "--num_runs=2", "--epochs=2", "--resume=True", *flags).stdout
    assert "[seed 1] Epoch: 2/2" in out and "Epoch: 1/2" not in out
    single = run_main(workdir, "--random_seed=2", "--epochs=2", "--ckpt_dir=single", *flags,
                      "--print_freq=1")  # its bar then shows every batch's figures
    # each run's progress: a line at each quarter of the epoch (90 images, batches of 16),
    # with figures the single run's bar showed
    for seen in (32, 48, 80):
        lines = [line for line in out.splitlines() if f" of epoch 2: {seen}/90 - " in line]
        assert sorted(line.split("]")[0] for line in lines) == ["[seed 1", "[seed 2"]
        assert all(f"] {100 * seen // 90}% of epoch 2" in line for line in lines)
        seed2 = next(line for line in lines if line.startswith("[seed 2]"))
        figures = re.search(r"loss: [0-9.]+ - acc: ([0-9.]+)$", seed2)
        assert figures[0] in single.stderr  # the bar's description, at some point
        assert float(figures[1]) * seen / 100 == pytest.approx(
            round(float(figures[1]) * seen / 100), abs=1e-3)  # k right of the seen
    assert_same_run(states(workdir / "ckpt" / "seed2"), states(workdir / "single"))
    assert (workdir / "plots" / "seed2" / NAME / "l_2.p").read_bytes() == \
        (workdir / "single" / "plots" / NAME / "l_2.p").read_bytes()

    best = {s: states(workdir / "ckpt" / f"seed{s}", best=True) for s in (1, 2)}
    for s in (1, 2):
        assert f"[*] seed {s}: best epoch {best[s]['epoch']}, best valid acc " \
            f"{best[s]['best_valid_acc']:.3f}%" in out
    accs = [best[s]["best_valid_acc"] for s in (1, 2)]
    mean, sd = runs.mean_sd(accs)
    assert f"[*] 2 runs: best valid acc {mean:.3f}% ± {sd:.3f} (mean ± sd)" in out

    out = run_main(workdir, "--num_runs=2", "--is_train=False", *flags).stdout
    alone = run_main(workdir, "--is_train=False", "--random_seed=2", "--ckpt_dir=ckpt/seed2",
                     *flags).stdout
    test_line = next(line for line in alone.splitlines() if "Test Acc" in line)
    assert out.count("[*] Test Acc: ") == 2 and test_line in out.split("[*] seed 2:")[1]
    correct = [int(line.split()[3].split("/")[0]) for line in out.splitlines()
               if "Test Acc" in line]
    errors = [100 * (1 - k / 40) for k in correct]
    mean, sd = runs.mean_sd(errors)
    assert f"[*] Test error over 2 runs: {mean:.2f}% ± {sd:.2f}" in out
    chosen = 1 if accs[0] >= accs[1] else 2
    assert f"[*] Chosen on validation: seed {chosen} (best valid acc {accs[chosen - 1]:.3f}%), " \
        f"test error {errors[chosen - 1]:.2f}%" in out


@pytest.mark.slow
def test_a_mistake_common_to_all_runs_is_one_line(workdir):
    proc = run_main(workdir, "--num_runs=2", "--dataset=folder", "--data_dir=nowhere", *TINY,
                    check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "main.py: error: " in proc.stderr
    assert "nowhere" in proc.stderr and "seed" not in proc.stderr
    assert not os.path.exists(workdir / "ckpt" / "seed1" / f"{NAME}_ckpt.pth.tar")


@pytest.mark.slow
def test_a_kill_stops_every_run_and_they_resume(workdir):
    """SIGTERM to the process a user started (not to its runs): each run stops, the epochs
    saved are named in one line with the command that resumes them all, exit 143."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    args = [sys.executable, os.path.join(ROOT, "main.py"), "--num_runs=2", "--epochs=100000",
            "--train_patience=100000", "--num_threads=1", *TINY]
    proc = subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not all(os.path.exists(workdir / "ckpt" / f"seed{s}" / f"{NAME}_ckpt.pth.tar")
                  for s in (1, 2)):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err
    saved = {s: states(workdir / "ckpt" / f"seed{s}")["epoch"] for s in (1, 2)}
    line = err.strip().splitlines()[-1]
    assert line == f"[!] Interrupted: the epochs saved are seed 1: {saved[1]}, seed 2: " \
        f"{saved[2]}; resume them all with python main.py --num_runs=2 --epochs=100000 " \
        f"--train_patience=100000 --num_threads=1 {' '.join(TINY)} --resume=True", err
    out = run_main(workdir, "--num_runs=2", f"--epochs={max(saved.values()) + 1}",
                   "--train_patience=100000", "--num_threads=1", "--resume=True", *TINY).stdout
    for s in (1, 2):
        assert f"[seed {s}] [*] Loaded {NAME}_ckpt.pth.tar checkpoint @ epoch {saved[s]}" in out
