"""Data-parallel training under torchrun (gloo on CPU): the same algorithm as one process,
checkpoints that move between the two, and faults that stop every process."""
import functools
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import ROOT, TINY, make_mnist, run_main

pytestmark = pytest.mark.slow  # subprocesses: main.py, torchrun, plot_glimpses.py

NAME = "ram_6_8x8_2"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def torchrun(cwd, *args, nproc=2, check=True, launch=("--standalone",), timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([*TORCHRUN, *launch, f"--nproc_per_node={nproc}",
                           os.path.join(ROOT, "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def weights(path):
    return torch.load(path, weights_only=True)["model_state"]


def test_torchrun_trains_resumes_exactly_and_tests_in_one_process(workdir, tmp_path):
    out = torchrun(workdir, "--epochs=1", *TINY).stdout
    assert "[*] Training data-parallel on 2 processes (gloo): 16 images a batch each, 32 in " \
        "all" in out
    assert out.count("Epoch: 1/1") == 1  # rank 0 alone prints
    assert sorted(os.listdir(workdir / "ckpt")) == [f"{NAME}_ckpt.pth.tar",
                                                   f"{NAME}_history.csv",
                                                   f"{NAME}_model_best.pth.tar",
                                                   f"{NAME}_params.json"]
    ckpt = torch.load(workdir / "ckpt" / f"{NAME}_ckpt.pth.tar", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model_state"])
    assert len(ckpt["rng_states"]) == 2
    assert not torch.equal(ckpt["rng_states"][0]["torch"], ckpt["rng_states"][1]["torch"])
    # 1 + 1 epochs under torchrun give the weights of 2 straight, bit for bit
    torchrun(workdir, "--epochs=2", "--resume=True", *TINY)
    straight = tmp_path / "straight"
    torchrun(workdir, "--epochs=2", f"--ckpt_dir={straight}", *TINY)
    a, b = weights(straight / f"{NAME}_ckpt.pth.tar"), weights(
        workdir / "ckpt" / f"{NAME}_ckpt.pth.tar")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the torchrun checkpoint tests and resumes in one process; each test image counts once
    single = run_main(workdir, "--is_train=False", *TINY).stdout
    assert re.search(r"Test Acc: \d+/40 ", single)
    assert run_main(workdir, "--epochs=3", "--resume=True", *TINY).returncode == 0
    # and a one-process checkpoint resumes under torchrun
    out = torchrun(workdir, "--epochs=4", "--resume=True", *TINY).stdout
    assert "Loaded ram_6_8x8_2_ckpt.pth.tar checkpoint @ epoch 3" in out and "Epoch: 4/4" in out
    parallel = torchrun(workdir, "--is_train=False", *TINY).stdout
    assert re.search(r"Test Acc: \d+/40 ", parallel)


def test_two_nodes_on_this_machine(workdir):
    """Two torchrun launches, --nnodes=2, c10d rendezvous on 127.0.0.1, a process each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(
        [*TORCHRUN, "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
         "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=ramtest",
         os.path.join(ROOT, "main.py"), "--epochs=1", *TINY], cwd=workdir, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "data-parallel on 2 processes (gloo)" in outs[0][0] + outs[1][0]
    assert os.path.isfile(workdir / "ckpt" / f"{NAME}_model_best.pth.tar")


@pytest.mark.parametrize("flag,line", [
    ("--std=0", "main.py: error: --std must be positive"),
    ("--compile=True", "main.py: error: --compile=True does not run under torchrun yet"),
    ("--bogus=1", "main.py: error: unrecognized arguments: --bogus=1"),
    ("--is_train=False --predict=x.png", "main.py: error: --predict runs in one process"),
])
def test_a_user_error_is_one_line_from_all_processes(workdir, flag, line):
    proc = torchrun(workdir, *flag.split(), *TINY, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count(line) == 1, proc.stderr
    assert not (workdir / "ckpt").exists()


def waiting(pid):
    """Whether process pid sits in a timed sleep (utils.error_exit's wait for torchrun), as
    Linux's /proc tells; elsewhere never, and the caller waits out its time limit."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return "nanosleep" in f.read()
    except OSError:
        return False


@pytest.mark.parametrize("flag", ["--bogus=1", "--std=0"])
def test_another_rank_leaves_a_user_error_to_rank_0(workdir, flag):
    """Rank 1 says nothing and stays until torchrun stops it (as it does once rank 0 has said
    the error): a rank 1 that left first got rank 0 stopped before it spoke."""
    env = dict(os.environ, RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), flag], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.time() + 15  # python and torch start (slowly on a busy CI machine)
    while not waiting(proc.pid) and time.time() < end:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(2)  # and it stays
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == (2 if flag == "--bogus=1" else 1) and not err and not out


def start_torchrun(cwd, *args):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([*TORCHRUN, "--standalone", "--nproc_per_node=2",
                             os.path.join(ROOT, "main.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def workers(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_for_checkpoint(cwd, proc):
    end = time.time() + 120
    while not os.path.exists(cwd / "ckpt" / f"{NAME}_ckpt.pth.tar"):
        assert proc.poll() is None and time.time() < end, proc.communicate()
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_to_torchrun_stops_every_process(workdir, sig):
    proc = start_torchrun(workdir, "--epochs=1000", *TINY)
    wait_for_checkpoint(workdir, proc)
    children = workers(proc.pid)
    assert len(children) == 2
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    saved = [l for l in err.replace("\r", "\n").splitlines() if "[!] Interrupted" in l]
    assert len(saved) == 1 and "is safely saved" in saved[0], err
    assert "torchrun --standalone --nproc_per_node=2 main.py --epochs=1000" in saved[0]
    assert not any(os.path.exists(f"/proc/{c}") for c in children)


def test_a_process_that_dies_stops_the_others(workdir):
    proc = start_torchrun(workdir, "--epochs=1000", *TINY)
    wait_for_checkpoint(workdir, proc)
    children = workers(proc.pid)
    os.kill(children[1], signal.SIGKILL)
    proc.communicate(timeout=120)  # no hang
    assert proc.returncode != 0
    time.sleep(1)
    assert not any(os.path.exists(f"/proc/{c}") for c in children)


# ------------------------------------------------------------------ in-process, two ranks
def two_ranks(rank, port, tmp, fn):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.save(fn(rank), os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        gc.collect()  # as main.py: DDP freed at exit, after the group, may abort the process
        dist.destroy_process_group()


def run_two_ranks(tmp_path, fn):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(two_ranks, args=(port, str(tmp_path), fn), nprocs=2)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def one_step(rank):
    """The gradients of one training step on this rank's 3 of 6 images, through DDP."""
    from model import ModelConfig, RecurrentAttention, loss_terms
    torch.manual_seed(0)
    model = RecurrentAttention(ModelConfig(patch_size=6, num_patches=2, glimpse_scale=2))
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    l_0, eps = torch.rand(6, 2) * 2 - 1, torch.randn(4, 6, 2)  # the same noise everywhere
    net = model if rank is None else torch.nn.parallel.DistributedDataParallel(model)
    rows = slice(None) if rank is None else slice(3 * rank, 3 * rank + 3)
    loss_terms(net(x[rows], l_0[rows], 4, eps[:, rows]), y[rows]).total.backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_ddp_gradients_equal_one_process_on_the_whole_batch(tmp_path):
    """GlimpseLoop's written-out backward under DDP: 2 processes of 3 images give the
    gradients one process gets on the 6 (the same noise), up to summation order."""
    whole = one_step(None)
    for grads in run_two_ranks(tmp_path, one_step):
        for n, g in whole.items():
            torch.testing.assert_close(grads[n], g, msg=n)


def shard_evaluation(data_dir, rank):
    """Validation on this rank's shard of tiny data, as the trainer does it."""
    import config
    from conftest import make_trainer
    cfg = config.get_config([f"--data_dir={data_dir}", *TINY])
    trainer = make_trainer(cfg)
    return trainer.evaluate(trainer.valid_loader), trainer.valid_loader.local_samples


def test_every_rank_sees_the_same_validation(tmp_path):
    make_mnist(str(tmp_path / "data"), n_train=101)  # 10 validation images: 5 + 5
    (r0, n0), (r1, n1) = run_two_ranks(tmp_path, functools.partial(shard_evaluation,
                                                                    str(tmp_path / "data")))
    assert r0 == r1 and n0 + n1 == 10  # the same figures everywhere, each image once


# ------------------------------------------------------------------ on a GPU only
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@cuda
def test_cuda_gradients_equal_cpu():
    from model import ModelConfig, RecurrentAttention, loss_terms
    grads = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = RecurrentAttention(ModelConfig(patch_size=6, num_patches=2)).to(device)
        x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
        l_0, eps = torch.rand(8, 2) * 2 - 1, torch.randn(4, 8, 2)
        loss_terms(model(*(t.to(device) for t in (x, l_0)), 4, eps.to(device)),
                   y.to(device)).total.backward()
        grads.append({n: p.grad.cpu() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-5, msg=n)


@cuda
def test_cuda_checkpoint_tests_on_cpu(workdir):
    run_main(workdir, "--epochs=1", *TINY)  # on the GPU
    out = run_main(workdir, "--is_train=False", "--use_gpu=False", *TINY).stdout
    assert re.search(r"Test Acc: \d+/40 ", out)


@cuda
def test_cuda_torchrun_with_nccl(workdir):
    out = torchrun(workdir, "--epochs=1", *TINY, nproc=1).stdout
    assert "data-parallel on 1 processes (nccl)" in out


def one_trained_epoch(data_dir, rank):
    """The weights after one epoch of the trainer's own training loop on this rank."""
    import config
    from conftest import make_trainer
    cfg = config.get_config([f"--data_dir={data_dir}", "--plot_freq=0", *TINY])
    trainer = make_trainer(cfg)
    assert isinstance(trainer.net, torch.nn.parallel.DistributedDataParallel)
    trainer.train_one_epoch(0)
    return trainer.model.state_dict()


def test_ddp_keeps_every_process_on_the_same_weights(tmp_path):
    """The trainer's training runs through DDP: after an epoch of different shards and
    different noise, both processes hold the same weights (and they did move)."""
    make_mnist(str(tmp_path / "data"))
    a, b = run_two_ranks(tmp_path, functools.partial(one_trained_epoch, str(tmp_path / "data")))
    torch.manual_seed(1)
    from model import ModelConfig, RecurrentAttention
    start = RecurrentAttention().state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    assert not torch.equal(a["rnn.h2h.weight"], start["rnn.h2h.weight"])


def test_torchrun_on_an_image_folder_streamed_or_in_memory(tmp_path):
    """Each process reads its shard of the folder; streamed from disk or served from memory,
    the same weights; test counts every image once."""
    from test_folder import make_folder
    make_folder(tmp_path / "d", colour=True)
    states = []
    for i, flags in enumerate([(), ("--in_memory_gb=0",)]):
        out = torchrun(tmp_path, "--dataset=folder", "--data_dir=d", "--epochs=1",
                       f"--ckpt_dir=ck{i}", *TINY, *flags).stdout
        assert "[*] Training data-parallel on 2 processes" in out
        states.append(weights(tmp_path / f"ck{i}" / "ram_6_8x8_2_d_ckpt.pth.tar"))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    out = torchrun(tmp_path, "--dataset=folder", "--data_dir=d", "--is_train=False",
                   "--ckpt_dir=ck1", "--in_memory_gb=0", *TINY).stdout
    assert re.search(r"Test Acc: \d+/18 ", out)
