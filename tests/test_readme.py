"""The README stays true: its commands parse, its flag table is the parser's, its files exist."""
import os
import re
import shlex

import pytest

import config
from conftest import ROOT

README = open(os.path.join(ROOT, "README.md")).read()


def commands(script):
    """Every `python SCRIPT ...` command the README shows, as argument lists."""
    found = re.findall(rf"python {script}((?: [^`#\n|]+)*)", README)
    return [shlex.split(c.replace("\\", "")) for c in found]


def test_every_main_command_parses_and_checks():
    cmds = commands("main.py")
    assert len(cmds) >= 15
    for argv in cmds:
        argv = [a for a in argv if a.startswith("--")]
        if argv == ["--help"]:
            continue
        c = config.get_config(argv)
        config.check(c)
        if not c.is_train:  # a model the README says is there
            assert c.ckpt_dir == "./ckpt" or os.path.isdir(os.path.join(ROOT, c.ckpt_dir)), argv


def test_flag_table_matches_the_parser():
    rows = re.findall(r"^\| `(--[A-Za-z_]+)`(?:, `(--[a-z_]+)`)? \| ([^|]+) \|", README, re.M)
    documented = {}
    for first, second, default in rows:
        defaults = [d.strip() for d in default.split(",")]
        for i, flag in enumerate(f for f in (first, second) if f):
            documented[flag] = defaults[min(i, len(defaults) - 1)]
    actions = {a.option_strings[0]: a for a in config.parser._actions
               if a.option_strings and a.help != "==SUPPRESS=="
               and a.option_strings[0] != "-h"}
    assert set(documented) == set(actions)
    for flag, action in actions.items():
        if isinstance(action.default, float):
            assert float(documented[flag]) == action.default, flag
        elif action.default is not None:
            assert documented[flag] == str(action.default), flag


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
    assert folder + "/" in README and name.split("_model")[0].split("_params")[0] in README
    assert os.path.isfile(os.path.join(ROOT, path))


def test_bench_has_its_own_few_flags_each_with_help():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), "--help"],
                         capture_output=True, text=True, timeout=120).stdout
    flags = re.findall(r"^  (--[a-z_]+)", out, re.M)
    assert "--dataset" in flags and "--epoch" in flags and "--ckpt_dir" not in flags
    lines = out.split("options:")[1]
    for flag in flags:  # a help text after each flag (on its line or the next)
        after = lines.split(flag, 1)[1].split("\n  --", 1)[0]
        assert len(re.sub(r"[A-Z_]+", "", after).strip()) > 3, flag
