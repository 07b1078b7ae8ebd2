"""The training loop's decisions (LR schedule, early stopping, Monte-Carlo averaging) against
what they should be, and a short run that must learn."""
import re

import pytest
import torch

import checkpoint
import config
import main
from conftest import make_mnist, make_trainer, run_main
from model import Rollout
from trainer import initial_location, rollout


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    """A Trainer on tiny data whose epochs are replaced by fakes (see scripted)."""
    make_mnist(str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)

    def make(*flags):
        cfg = config.get_config(["--plot_freq=0", "--batch_size=16", *flags])
        config.check(cfg)
        import utils
        utils.prepare_dirs(cfg.ckpt_dir)
        return make_trainer(cfg)
    return make


def scripted(trainer, accuracies):
    """Each epoch trains nothing and validates at the next of accuracies; returns the LR seen
    at the start of each epoch."""
    accs, lrs = iter(accuracies), []

    def train_one_epoch(epoch):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        return 1.0, 50.0

    trainer.train_one_epoch = train_one_epoch
    trainer.evaluate = lambda loader: (1.0, next(accs), 0)
    trainer.train()
    return lrs


def test_lr_is_cut_only_when_validation_stops_improving(trainer):
    t = trainer("--lr_patience=1", "--epochs=7")
    lrs = scripted(t, [10, 20, 30, 40, 40, 40, 40])
    # improving: 3e-4 throughout; then 40 twice more without improvement -> cut by 10
    assert lrs[:5] == [3e-4] * 5
    assert lrs[6] == pytest.approx(3e-5)


# scripted epochs take no optimizer step, which torch warns of when the schedule steps
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_lr_decay_multiplies_the_lr_every_epoch_whatever_validation_does(trainer):
    t = trainer("--lr_decay=0.5", "--lr_patience=1", "--epochs=5")
    lrs = scripted(t, [10, 10, 10, 20, 30])
    assert lrs == pytest.approx([3e-4 * 0.5 ** k for k in range(5)])


def test_early_stop_after_train_patience_epochs_without_improvement(trainer):
    t = trainer("--train_patience=2", "--epochs=20")
    lrs = scripted(t, [50, 40, 40, 40, 40, 40, 40, 40])
    # the seed's rule: stop once the counter exceeds the patience -> 3 epochs after the best
    assert len(lrs) == 4 and t.counter == 3


@pytest.mark.parametrize("M", [1, 2, 3])
def test_rollout_averages_the_m_copies_of_each_image(trainer, M):
    """rollout(M) averages the M copies of each image (rows b, B + b, 2B + b, ...), not
    neighbouring images; training's rollout (M left out) is one run per image."""
    t = trainer(f"--M={M}", "--num_glimpses=2")
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    l_0 = initial_location(4 * M, "random", "cpu")
    torch.manual_seed(3)
    with torch.no_grad():
        out, losses = rollout(t.model, x, y, l_0, M) if M > 1 else rollout(t.model, x, y, l_0)
    torch.manual_seed(3)
    with torch.no_grad():
        rows = t.model(x.repeat(M, 1, 1, 1), l_0, 2)
    assert rows.R is None and out.R is None and out.actions is None  # a classifier's
    for name, got, all_rows in zip(Rollout._fields[:4], out, rows):
        expected = torch.stack([sum(all_rows[m * 4 + b] for m in range(M)) / M
                                for b in range(4)])
        torch.testing.assert_close(got, expected, msg=name)
    assert torch.equal(losses.R, (out.log_probas.argmax(1) == y).float())


def test_evaluate_counts_every_image_once(trainer):
    """A classifier that always says 3: accuracy is exactly the share of 3s, over every
    batch (the last one smaller)."""
    t = trainer("--M=2", "--valid_size=0.25")
    with torch.no_grad():
        t.model.classifier.fc.weight.zero_()
        t.model.classifier.fc.bias.copy_(torch.arange(10.0) == 3)
    loader = t.valid_loader
    loader.batch_size = 7  # 25 images: 4 batches
    threes = int((loader.labels[loader.indices] == 3).sum())
    run, calls = t.run, []
    t.run = lambda net, x, y, l_0, M=1: calls.append((M, len(l_0))) or run(net, x, y, l_0, M)
    torch.manual_seed(4)
    loss, acc, correct = t.evaluate(loader)
    assert loader.num_samples == 25 and correct == threes and acc == 100 * threes / 25
    # M runs per image, every batch
    assert calls == [(2, 14)] * 3 + [(2, 8)] and not t.model.training
    torch.manual_seed(4)  # the loss: the mean over the images of each batch's loss
    with torch.no_grad():
        expected = sum(run(t.model, x, y, initial_location(2 * len(x), "random", "cpu"), 2)[1]
                       .total.item() * len(y) for x, y in loader) / 25
    assert loss == pytest.approx(expected, rel=1e-6)


def test_initial_location():
    assert torch.equal(initial_location(5, "center", "cpu"), torch.zeros(5, 2))
    l_0 = initial_location(2000, "random", "cpu")
    assert l_0.shape == (2000, 2) and l_0.min() >= -1 and l_0.max() <= 1
    assert l_0.min() < -0.99 and l_0.max() > 0.99 and abs(l_0.mean()) < 0.05  # uniform


@pytest.mark.slow
def test_a_short_run_learns(tmp_path):
    """On the tiny data (a bright square whose place is the class), 10 epochs with a glimpse
    wide enough to see it reach far above chance (10%); a broken loss stays near chance."""
    make_mnist(str(tmp_path / "data"), n_train=300, n_test=100)
    flags = ["--batch_size=16", "--M=2", "--num_patches=3", "--num_glimpses=2", "--plot_freq=0"]
    run_main(tmp_path, "--epochs=10", "--init_lr=3e-3", "--valid_size=0.2", *flags)
    out = run_main(tmp_path, "--is_train=False", *flags).stdout
    correct = int(re.search(r"Test Acc: (\d+)/100", out).group(1))
    assert correct >= 60, out


class _FirstStep(Exception):
    pass


def first_step_grads(t):
    """The gradients the optimizer's first step of an epoch receives."""
    seen = []

    def step(*args, **kwargs):
        seen.append([p.grad.clone() for p in t.model.parameters()])
        raise _FirstStep
    t.optimizer.step = step
    with pytest.raises(_FirstStep):
        t.train_one_epoch(0)
    return seen[0]


def test_max_grad_norm_scales_the_whole_gradient_down_to_it(trainer):
    torch.manual_seed(1)
    g = first_step_grads(trainer())
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p) for p in g]))
    for clip in (norm.item() / 3, norm.item() * 3):
        torch.manual_seed(1)
        clipped = first_step_grads(trainer(f"--max_grad_norm={clip}"))
        scale = min(1.0, clip / norm.item())  # one factor for all parameters: the direction stays
        assert all(torch.allclose(c, p * scale, rtol=1e-5, atol=1e-9) for c, p in zip(clipped, g))


def test_ema_decay_validates_and_keeps_the_moving_average_of_the_weights(trainer):
    """--ema_decay=d: after the steps' weights w_1..w_n, the average a_1 = w_1,
    a_k = d a_(k-1) + (1 - d) w_k is what validation runs and what model_state holds; the
    weights trained go on in train_state."""
    t = trainer("--ema_decay=0.8", "--M=2", "--epochs=1")
    steps, step = [], t.optimizer.step

    def step_and_record(*args, **kwargs):
        step(*args, **kwargs)
        steps.append([p.detach().clone() for p in t.model.parameters()])
    t.optimizer.step = step_and_record
    torch.manual_seed(5)
    t.train()
    average = steps[0]
    for w in steps[1:]:
        average = [0.8 * a + 0.2 * p for a, p in zip(average, w)]
    assert len(steps) == 6  # 90 training images, 16 a batch
    for a, p in zip(average, t.evaluated.parameters()):
        torch.testing.assert_close(p, a)
    ckpt = torch.load(checkpoint.path(t.config, best=False), weights_only=True)
    names = [n for n, _ in t.model.named_parameters()]
    for n, a, w in zip(names, average, steps[-1]):
        torch.testing.assert_close(ckpt["model_state"][n], a)
        assert torch.equal(ckpt["train_state"][n], w) and not torch.equal(a, w)
    # validation runs the average: the same figures as a plain model holding it
    plain = trainer("--M=2")
    plain.model.load_state_dict(ckpt["model_state"])
    torch.manual_seed(6)
    got = t.evaluate(t.valid_loader)
    torch.manual_seed(6)
    assert got == plain.evaluate(plain.valid_loader)
    # testing the latest checkpoint (--best=False) tests the average too, not train_state
    tested, _, _ = main.trained_model(config.get_config(["--is_train=False", "--best=False",
                                                      "--ema_decay=0.8", "--M=2"]),
                                   torch.device("cpu"), None, None)
    for n, p in tested.named_parameters():
        assert torch.equal(p, ckpt["model_state"][n]), n


@pytest.mark.parametrize("game", [False, True])
def test_an_epochs_picture_is_the_model_after_that_epoch(trainer, game, monkeypatch):
    """The pickles of epoch 1 show the saved epoch-1 model looking at the epoch's first
    images (not the model before it trained, as the first batch did), with noise of their own:
    the same forward on the checkpoint gives the pickled places, classes or actions, and a run
    that draws nothing trains to the same weights."""
    import pickle
    import numpy as np
    import catch
    import utils
    monkeypatch.setattr(catch, "TRAIN_GAMES", 256)
    monkeypatch.setattr(catch, "VALID_GAMES", 64)
    flags = ["--plot_freq=1", "--epochs=1"] + (
        ["--dataset=catch", "--screen_size=6", "--batch_size=64"] if game else [])
    torch.manual_seed(1)  # as main.py seeds before it builds the model
    t = trainer(*flags)
    utils.prepare_dirs(t.plot_dir)
    t.train()
    saved = torch.load(checkpoint.path(t.config, best=False), weights_only=True)
    with open(f"{t.plot_dir}/l_1.p", "rb") as f:
        locs = np.stack(pickle.load(f), 1)
    with open(f"{t.plot_dir}/y_1.p", "rb") as f:
        classes, said = pickle.load(f)
    model = main.build(t.config, t.train_loader.image_shape, t.train_loader.classes, "cpu")
    model.load_state_dict(saved["model_state"])
    model.eval()
    t.train_loader.set_epoch(0)
    x, y = t.train_loader.replay(*next(iter(t.train_loader)))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        out = model(x, initial_location(len(x), "random", "cpu"))
    assert np.array_equal(locs, out.locs.numpy())
    if game:
        assert classes == out.actions.tolist()
        assert said == ["caught" if r else "missed" for r in out.R.tolist()]
    else:
        assert said == [t.train_loader.classes[k] for k in out.log_probas.argmax(1).tolist()]
    # drawing took no number from training's random stream
    torch.manual_seed(1)
    quiet = trainer(*flags[1:], "--plot_freq=0", "--ckpt_dir=quiet")
    quiet.train()
    other = torch.load(checkpoint.path(quiet.config, best=False), weights_only=True)
    for k, v in saved["model_state"].items():
        assert torch.equal(v, other["model_state"][k]), k
