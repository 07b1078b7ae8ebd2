"""The README and the record stay true: their commands parse, their files exist, --help gives
every flag with its default."""
import os
import re
import shlex

import pytest

import config
import utils
from conftest import ROOT

README = open(os.path.join(ROOT, "README.md")).read()
RECORD = open(os.path.join(ROOT, "RESULTS.md")).read()


def commands(script):
    """Every `python SCRIPT ...` command the README and the record show, as argument lists."""
    found = re.findall(rf"python {script}((?: [^`#\n|]+)*)", README + RECORD)
    return [shlex.split(c.replace("\\", "")) for c in found]


def test_every_main_command_parses_and_checks():
    cmds = commands("main.py")
    assert len(cmds) >= 15
    trained = {"./ckpt"}
    for argv in cmds:
        argv = [a for a in argv if a.startswith("--")]
        if argv == ["--help"]:
            continue
        c = config.get_config(argv)
        config.check(c)
        if c.is_train:
            trained.add(c.ckpt_dir)
        else:  # a model that is shipped, or that a command before this one trains
            assert c.ckpt_dir in trained or os.path.isdir(os.path.join(ROOT, c.ckpt_dir)), argv


def test_help_gives_every_flag_with_its_default():
    """The README has no flag table: --help is the reference, every flag with its default."""
    text = config.parser.format_help().split("options:", 1)[1]
    for action in config.parser._actions:
        if not action.option_strings or action.help == "==SUPPRESS==" or action.dest == "help":
            continue
        flag = action.option_strings[0]
        found = re.search(rf"^  {flag}[ \n](.*?)(?=^  -|\Z)", text, re.M | re.S)
        assert found and action.help, flag
        entry = found.group(1)
        if action.default is not None:
            assert "default" in " ".join(entry.split()), flag


@pytest.mark.parametrize("path", ["ckpt/shipped/ram_6_8x8_2_model_best.pth.tar",
                                  "ckpt/shipped/ram_6_8x8_2_params.json",
                                  "plots/learning_curve.png", "plots/example.gif",
                                  "plots/paper_tasks.png", "plots/cluttered100.gif",
                                  "plots/cluttered100_restarts.png",
                                  "ckpt/shipped/ram_8_12x12_2_k3_lstm_translated60_model_best.pth.tar",
                                  "ckpt/shipped/ram_6_12x12_2_k3_lstm_translated60_model_best.pth.tar",
                                  "ckpt/shipped/ram_8_12x12_2_k3_lstm_cluttered60_params.json",
                                  "ckpt/shipped/ram_8_12x12_2_k4_lstm_cluttered100_model_best.pth.tar"])
def test_files_the_readme_names_exist(path):
    folder, name = os.path.split(path)
    docs = README + RECORD
    assert folder + "/" in docs and name.split("_model")[0].split("_params")[0] in docs
    assert os.path.isfile(os.path.join(ROOT, path))


def test_bench_takes_main_flags():
    """bench.py parses main.py's flags, with main's defaults and checks, plus its own."""
    import bench
    args = bench.get_args(["--dataset=cluttered", "--canvas_size=100", "--steps=3"])
    assert (args.num_clutter, args.clutter_size, args.size, args.steps) == (8, 8, 100, 3)
    defaults = config.get_config([])
    config.check(defaults)
    defaults = utils.settings(defaults)
    assert {k: v for k, v in vars(bench.get_args([])).items() if k in defaults} == defaults


@pytest.mark.slow
def test_the_readme_says_how_many_tests_a_user_runs():
    """The quick start's count of tests is the suite's (a subprocess collects it)."""
    import subprocess
    import sys
    said = re.search(r"the second runs the tests \((\d+) tests", README)
    assert said, "the quick start no longer says how many tests there are"
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          os.path.join(ROOT, "tests")], capture_output=True, text=True).stdout
    assert f"{said.group(1)} tests collected" in out, out[-300:]


def test_the_quick_start_pastes_in_order():
    """One interpreter throughout (the first line activates the venv that every later
    `python` is), and the CPU-only install is said before the line that would fetch CUDA's."""
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    first_block = quick.split("```", 2)[1]
    assert ". .venv/bin/activate &&" in first_block.splitlines()[1]
    assert quick.index("whl/cpu") < quick.index("```")
    later = quick.split("```", 3)[3]
    assert ".venv/bin/python" not in later and "python main.py" in later
