"""The tests' launches of main.py (run_main, through launcher.py) are what `python main.py`
gives: the same exit status, output and files, in the folder and environment given."""
import os
import subprocess
import sys

import pytest
import torch

import conftest
from conftest import ROOT, TINY, make_mnist, run_main

pytestmark = pytest.mark.slow  # subprocesses: main.py


@pytest.mark.parametrize("args", [
    ["--help"],                                      # stdout, exit 0
    ["--is_train=False", "--dataset=translated"],    # a user error: exit 1, read from cwd
    ["--batch_size=ten"],                            # argparse's: exit 2
])
def test_a_launch_is_python_main_py(workdir, args):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    real = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=120)
    launched = run_main(workdir, *args, check=False)
    assert (launched.returncode, launched.stdout, launched.stderr) == \
        (real.returncode, real.stdout, real.stderr)


def test_a_launch_trains_as_python_main_py(tmp_path):
    """A tiny training, launched both ways in folders of their own: the same lines, the same
    files in ckpt/, the same weights to the bit."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    real, launched = tmp_path / "real", tmp_path / "launched"
    for d in real, launched:
        make_mnist(str(d / "data"))
    ran = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--epochs=1", *TINY],
                         cwd=real, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert run_main(launched, "--epochs=1", *TINY).stdout == ran.stdout
    assert sorted(os.listdir(real / "ckpt")) == sorted(os.listdir(launched / "ckpt"))
    name = "ram_6_8x8_2_model_best.pth.tar"
    a, b = (torch.load(d / "ckpt" / name, weights_only=True)["model_state"]
            for d in (real, launched))
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_a_launch_sees_the_environment_of_its_call(workdir, monkeypatch):
    """A variable the test sets reaches main.py: COLUMNS, the width argparse wraps --help to."""
    wide = run_main(workdir, "--help").stdout
    monkeypatch.setenv("COLUMNS", "40")
    narrow = run_main(workdir, "--help").stdout
    real = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--help"],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=120).stdout
    assert narrow == real and len(narrow.splitlines()) > len(wide.splitlines())


def test_a_launch_past_its_timeout_is_killed(workdir):
    with pytest.raises(subprocess.TimeoutExpired):
        run_main(workdir, "--epochs=50", timeout=1)
    assert run_main(workdir, "--help").returncode == 0


def test_one_server_serves_test_after_test(workdir, monkeypatch):
    """pytest names the test running in PYTEST_CURRENT_TEST: a server per name would be a
    server, and its import of torch, per test."""
    run_main(workdir, "--help")
    server = conftest.launched.server
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/another.py::test (call)")
    run_main(workdir, "--help")
    assert conftest.launched.server is server and server.poll() is None
