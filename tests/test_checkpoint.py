"""Testing and --predict find their run: the flags' own checkpoint as in the seed, else the one
run in --ckpt_dir that fits the flags given, its settings taken for the rest (ckpt/shipped)."""
import os

import pytest
import torch

import checkpoint
from conftest import ROOT, make_config
from utils import UserError

SHIPPED = os.path.join(ROOT, "ckpt", "shipped")


def test_the_one_run_that_fits_the_flags_given_lends_its_settings(capsys):
    c = make_config("--is_train=False", f"--ckpt_dir={SHIPPED}", "--dataset=cluttered",
                    "--canvas_size=100", "--num_glimpses=8")
    checkpoint.choose(c, best=True)
    assert (c.patch_size, c.num_patches, c.num_glimpses, c.core, c.num_clutter) == \
        (12, 4, 8, "lstm", 8)
    assert "[*] Using ram_8_12x12_2_k4_lstm_cluttered100, the run in" in capsys.readouterr().out
    ckpt, file = checkpoint.load(c, "cpu", best=True)  # its own checks pass
    assert file.endswith("ram_8_12x12_2_k4_lstm_cluttered100_model_best.pth.tar")


def test_the_flags_own_checkpoint_comes_first(capsys):
    c = make_config("--is_train=False", f"--ckpt_dir={SHIPPED}")
    before = vars(c).copy()
    checkpoint.choose(c, best=True)
    assert vars(c) == before and capsys.readouterr().out == ""


def test_several_runs_that_fit_are_named_with_what_tells_them_apart():
    c = make_config("--is_train=False", f"--ckpt_dir={SHIPPED}", "--dataset=translated")
    with pytest.raises(UserError, match="holds 3 runs that fit these flags: "
                       r"ram_4_12x12_2_k3_lstm_translated60 \(--patch_size=12 --num_patches=3 "
                       r"--num_glimpses=4 --core=lstm\), "
                       r"ram_6_12x12_2_k3_lstm_translated60 \(--patch_size=12 --num_patches=3 "
                       r"--core=lstm\), ram_8_12x12_2_k3_lstm_translated60 \(--patch_size=12 "
                       r"--num_patches=3 --num_glimpses=8 --core=lstm\); pass the flags"):
        checkpoint.choose(c, best=True)


def test_a_baseline_is_chosen_only_when_named(capsys):
    """As in training, RAM unless --model names a baseline: the cluttered 60x60 flags with 8
    glimpses name RAM's run, not the convnet beside it."""
    c = make_config("--is_train=False", f"--ckpt_dir={SHIPPED}", "--dataset=cluttered",
                    "--canvas_size=60", "--num_glimpses=8")
    checkpoint.choose(c, best=True)
    assert (c.model, c.num_glimpses, c.core) == ("ram", 8, "lstm")
    assert "[*] Using ram_8_12x12_2_k3_lstm_cluttered60," in capsys.readouterr().out


def test_random_glimpses_are_chosen_only_when_named(capsys):
    """Two cluttered 60x60 runs of 8 glimpses differ only by their policy: the learned one
    unless --random_glimpses=True is given (as the record's test lines say)."""
    for flags, name in (([], "ram_8_12x12_2_k3_lstm_cluttered60"),
                        (["--random_glimpses=True"], "ram_8_12x12_2_k3_lstm_random_cluttered60")):
        c = make_config("--is_train=False", f"--ckpt_dir={SHIPPED}", "--dataset=cluttered",
                        "--canvas_size=60", "--num_glimpses=8", *flags)
        checkpoint.choose(c, best=True)
        assert f"[*] Using {name}," in capsys.readouterr().out


def test_a_flag_that_fits_no_run_names_every_run():
    c = make_config("--is_train=False", f"--ckpt_dir={SHIPPED}", "--num_glimpses=9")
    checkpoint.choose(c, best=True)
    with pytest.raises(UserError) as e:
        checkpoint.load(c, "cpu", best=True)
    names = [f[:-len("_params.json")] for f in os.listdir(SHIPPED) if f.endswith(".json")]
    models = [f for f in os.listdir(SHIPPED) if f.endswith("_model_best.pth.tar")]
    assert len(names) == len(models) >= 19 and all(f"{n} (" in str(e.value) for n in names)


@pytest.mark.parametrize("task, canvas", [("mnist", None), ("translated", 60),
                                          ("cluttered60", 60), ("cluttered100", 100)])
def test_torch_hub_loads_each_shipped_model_from_a_local_clone(task, canvas, tmp_path):
    """torch.hub.load(<clone>, task, source="local") gives the shipped model, whose answers on a
    few test images (tiny MNIST digits, on the task's canvas) are those of the model main.py
    builds from the same file with the same noise."""
    import main
    from conftest import make_mnist
    import data_loader
    hub = torch.hub.load(ROOT, task, source="local")
    assert not hub.training and hub.data["classes"] == [str(i) for i in range(10)]
    flags = [f"--data_dir={make_mnist(str(tmp_path))}", "--is_train=False", "--M=2",
             f"--ckpt_dir={SHIPPED}"] + (["--dataset=cluttered" if task.startswith("clut")
                                          else "--dataset=translated",
                                          f"--canvas_size={canvas}"] if canvas else [])
    if task in ("translated", "cluttered60", "cluttered100"):
        flags.append("--num_glimpses=8")
    c = make_config(*flags)
    checkpoint.choose(c, True)
    x, _ = next(iter(data_loader.get_test_loader(c, "cpu", 40)))
    built, _, _ = main.trained_model(c, "cpu", tuple(x.shape[1:]), hub.data["classes"])
    assert hub.config.network() == built.config.network()
    answers = []
    for model in (hub, built):
        torch.manual_seed(0)
        with torch.no_grad():
            answers.append(model(x, torch.rand(2 * len(x), 2) * 2 - 1).log_probas)
    assert torch.equal(*answers)


def test_torch_hub_loads_the_shipped_catch_agent_from_a_local_clone():
    """torch.hub.load(<clone>, "catch", source="local") plays the first 500 test games as the
    agent main.py builds from the same file, with the same noise, and the hub docstring's
    way (frames normalised as the checkpoint says) catches what main.py's games do."""
    import catch
    import main
    hub = torch.hub.load(ROOT, "catch", source="local")
    assert not hub.training and hub.data["classes"] == ["left", "stay", "right"]
    c = make_config("--dataset=catch", "--is_train=False", f"--ckpt_dir={SHIPPED}")
    checkpoint.choose(c, True)
    test_games = catch.get_test_loader(c, "cpu", 500)
    built, data, _ = main.trained_model(c, "cpu", test_games.image_shape, test_games.classes)
    assert hub.config.network() == built.config.network()
    test_games.normalisation = tuple(data["normalisation"])
    game, _ = next(iter(test_games))
    caught = []
    for model, play in ((hub, catch.Catch(game.start, 24, normalisation=hub.data["normalisation"])),
                        (built, game)):
        torch.manual_seed(0)
        with torch.no_grad():
            caught.append(model(play, torch.rand(500, 2) * 2 - 1).R)
    assert torch.equal(*caught) and caught[0].sum() > 100  # chance: about 40 of 500
