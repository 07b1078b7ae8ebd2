"""Catch: the game against a plain per-game reference, its seeded episodes, the agent's loss
(the actions trained by REINFORCE alone), its flags, and the CLI as a user runs it."""
import math
import os

import numpy as np
import pytest
import torch

import catch
from catch import Catch, Episodes, chase, play_by_hand, starts
from conftest import make_config, run_main
from model import ModelConfig, RecurrentAttention, loss_terms

f32 = np.float32


def reference_episode(column, dx, paddle, actions, size):
    """One game, step by step in float32 as the batched one computes: [(ball column, row,
    paddle) before each step], the reward, and whether it bounced."""
    x, dx, wall, trace, bounced = f32(column), f32(dx), size - 1, [], False
    for row, a in enumerate(actions):
        trace.append((min(max(int(np.floor(x + f32(0.5))), 0), wall), row, paddle))
        paddle = min(max(paddle + a - 1, 0), size - 2)
        x = f32(x + dx)
        if x < 0:
            x, dx, bounced = f32(-x), f32(-dx), True
        elif x > wall:
            x, dx, bounced = f32(f32(2 * wall) - x), f32(-dx), True
    column = min(max(int(np.floor(x + f32(0.5))), 0), wall)
    return trace, float(paddle <= column <= paddle + 1), bounced


@pytest.mark.parametrize("size", [24, 7])
def test_the_game_follows_a_plain_reference(size):
    """Ball path, bounces, paddle moves and clamps, the catch rule: 300 games of random
    actions, every step compared exactly with the per-game reference."""
    n = 300
    start = starts(n, size, seed=size)
    actions = torch.randint(3, (n, size - 1), generator=torch.Generator().manual_seed(1))
    game = Catch(start, size, record=True)
    for t in range(game.steps):
        game.step(actions[:, t])
    got_trace, got_reward = game.history().tolist(), game.reward().tolist()
    bounces = clamps = caught = 0
    for i in range(n):
        column, dx, paddle = start[i].tolist()
        trace, reward, bounced = reference_episode(column, dx, int(paddle),
                                                   actions[i].tolist(), size)
        assert [tuple(s) for s in got_trace[i]] == trace, i
        assert got_reward[i] == reward, i
        bounces += bounced
        clamps += any(p in (0, size - 2) for _, _, p in trace[1:])
        caught += reward
    # the test saw every rule at work
    assert bounces > 20 and clamps > 20 and 0 < caught < n


def test_a_frame_shows_the_ball_and_the_paddle_and_nothing_else():
    size = 10
    start = torch.tensor([[3.0, 0.6, 0.0], [9.0, -1.0, 8.0], [0.0, 0.0, 4.0]])
    game = Catch(start, size)
    for t in range(game.steps):
        screen = game.frame()[:, 0]
        expected = torch.zeros(3, size, size)
        for i, (column, row, paddle) in enumerate(zip(game.column().tolist(),
                                                      [t] * 3, game.paddle.tolist())):
            expected[i, row, column] = 1
            expected[i, size - 1, paddle:paddle + 2] = 1
        assert torch.equal(screen, expected), t
        game.step(torch.tensor([0, 2, 1]))


def test_the_starts_are_the_games_and_the_seed_alone_decides_them():
    s = starts(20000, 24, seed=5)
    column, dx, paddle = s.unbind(1)
    assert set(column.long().tolist()) == set(range(24))
    assert set(paddle.long().tolist()) == set(range(23))
    # dx = cos(angle) / cos(45 deg), the angle uniform in [45, 135]: |dx| <= 1, and
    # P(|dx| < cos(80 deg) / cos(45 deg)) = 20/90
    assert dx.abs().max() <= 1 and abs(dx.mean()) < 0.01
    share = (dx.abs() < math.cos(math.radians(80)) / math.cos(math.radians(45))).float().mean()
    assert abs(share - 20 / 90) < 0.01
    assert torch.equal(starts(20000, 24, seed=5), s)
    assert not torch.equal(starts(20000, 24, seed=6), s)


def games(loader):
    return torch.cat([game.x for game, _ in loader])


def test_training_games_change_with_the_epoch_and_the_seed_and_evaluation_games_never():
    config = make_config("--dataset=catch", "--batch_size=700")
    train, valid = catch.get_train_valid_loader(config, "cpu")
    first = games(train)
    assert len(first) == train.num_samples == catch.TRAIN_GAMES
    train.set_epoch(1)
    assert not torch.equal(games(train), first)
    train.set_epoch(0)
    assert torch.equal(games(train), first)  # a resumed epoch plays the same games
    other = catch.get_train_valid_loader(make_config("--dataset=catch", "--batch_size=700",
                                                     "--random_seed=2"), "cpu")
    assert not torch.equal(games(other[0]), first)
    assert torch.equal(games(other[1]), games(valid))  # validation: whatever the seed
    valid.set_epoch(7)
    assert torch.equal(games(other[1]), games(valid))  # and whatever the epoch
    test = catch.get_test_loader(config, "cpu", 1000)
    assert test.num_samples == 10000
    assert torch.equal(games(test), games(catch.get_test_loader(config, "cpu", 333)))


def test_sharded_evaluation_plays_each_game_once():
    whole = Episodes(101, 10, 8, "cpu", fixed_seed=3)
    parts = []
    for rank in range(3):
        part = Episodes(101, 10, 8, "cpu", fixed_seed=3)
        part.shard(rank, 3, pad=False)
        parts.append(games(part))
    assert sorted(torch.cat(parts).tolist()) == sorted(games(whole).tolist())


def test_the_hand_written_players():
    """chase keeps the paddle under a ball that falls straight; the random player's rate is
    the share of its games a plain loop scores as caught."""
    straight = torch.tensor([[5.0, 0.0, 17.0], [20.0, 0.0, 0.0], [0.0, 0.0, 22.0]])
    assert play_by_hand(chase, straight, 24).tolist() == [1.0, 1.0, 1.0]
    start = starts(200, 12, seed=9)
    g = torch.Generator().manual_seed(4)
    got = play_by_hand("random", start, 12, generator=g)
    g = torch.Generator().manual_seed(4)
    game = Catch(start, 12)
    for _ in range(11):
        game.step(torch.randint(3, (200,), generator=g))
    assert torch.equal(got, game.reward())


def test_python_catch_prints_the_players_rates_on_the_test_games(capsys):
    """Counted again here: chase by the plain reference, step by step, on the test games."""
    catch.main()
    lines = capsys.readouterr().out.splitlines()
    game = next(iter(catch.get_test_loader(make_config("--dataset=catch"), "cpu", 10000)))[0]
    caught = 0
    for column, dx, paddle in zip(game.x.tolist(), game.dx.tolist(), game.paddle.tolist()):
        x, dx = f32(column), f32(dx)
        for _ in range(23):
            offset = min(max(int(np.floor(x + f32(0.5))), 0), 23) - paddle
            paddle = min(max(paddle + (-1 if offset < 0 else 1 if offset >= 2 else 0), 0), 22)
            x = f32(x + dx)
            if x < 0 or x > 23:
                x, dx = (f32(-x) if x < 0 else f32(f32(46) - x)), f32(-dx)
        caught += paddle <= min(max(int(np.floor(x + f32(0.5))), 0), 23) <= paddle + 1
    assert lines[1] == f"[*] chase (sees the whole screen): {caught}/10000 ({caught / 100:.2f}%)"
    g = torch.Generator().manual_seed(1)
    actions = [torch.randint(3, (10000,), generator=g) for _ in range(23)]
    replay = Catch(torch.stack([game.x, game.dx, game.paddle.float()], 1), 24)
    for a in actions:
        replay.step(a)
    caught = int(replay.reward().sum())
    assert lines[0] == f"[*] random actions: {caught}/10000 ({caught / 100:.2f}%)"


def agent(**kw):
    torch.manual_seed(0)
    return RecurrentAttention(ModelConfig(patch_size=2, num_patches=3, core="lstm",
                                          glimpse_hidden=16, loc_hidden=16, hidden_size=32,
                                          num_classes=3, control=True, **kw))


def test_the_agent_plays_every_frame_greedily_in_eval_and_sampling_in_training():
    model = agent()
    start = starts(64, 8, seed=1)
    model.eval()
    with torch.no_grad():
        out = model(Catch(start, 8), torch.zeros(64, 2))
    assert out.actions.shape == (64, 7) and out.log_probas.shape == (64, 7, 3)
    assert torch.equal(out.actions, out.log_probas.argmax(-1))
    # the game's reward, for the actions taken
    game = Catch(start, 8)
    for a in out.actions.unbind(1):
        game.step(a)
    assert torch.equal(out.R, game.reward())
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(Catch(start, 8), torch.zeros(64, 2))
    assert not torch.equal(out.actions, out.log_probas.argmax(-1))
    model.greedy = True  # what main.test switches for its second line, the other way round
    with torch.no_grad():
        out = model(Catch(start, 8), torch.zeros(64, 2))
    assert torch.equal(out.actions, out.log_probas.argmax(-1))


def test_the_actions_are_trained_by_reinforce_with_r_minus_b_and_nothing_else():
    """d loss / d log pi(a_t) = -0.01 (R - b_t) / B at the action taken, 0 at the others;
    no supervised term; the baseline's MSE reaches the baseline network alone."""
    model = agent()
    out = model(Catch(starts(16, 8, seed=2), 8), torch.zeros(16, 2))
    out.log_probas.retain_grad()
    losses = loss_terms(out, None)
    assert losses.action.item() == 0 and torch.equal(losses.R, out.R)
    losses.total.backward(retain_graph=True)
    B, T = out.actions.shape
    expected = torch.zeros(B, T, 3)
    advantage = out.R[:, None] - out.b.detach()
    expected.scatter_(2, out.actions.unsqueeze(2), (-0.01 * advantage / B).unsqueeze(2))
    torch.testing.assert_close(out.log_probas.grad, expected, rtol=1e-6, atol=1e-9)
    # the plain figure: mean over games of sum_t -(log pi(l_t) + log pi(a_t)) (R - b_t)
    torch.testing.assert_close(losses.reinforce, (-out.log_pi * advantage).sum(1).mean())
    assert losses.baseline.item() == pytest.approx(((out.b - out.R[:, None]) ** 2).mean().item())
    model.zero_grad()
    losses.baseline.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == name.startswith("baseliner"), \
            name


def test_the_action_term_trains_the_trunk_and_the_location_term_the_locator_alone():
    model = agent()
    out = model(Catch(starts(16, 8, seed=3), 8), torch.zeros(16, 2))
    advantage = out.R[:, None] - out.b.detach()
    action = out.log_probas.gather(2, out.actions.unsqueeze(2)).squeeze(2)
    (-(action * advantage).sum(1).mean()).backward(retain_graph=True)
    reached = {n.split(".")[0] for n, p in model.named_parameters()
               if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == {"sensor", "rnn", "classifier"}
    model.zero_grad()
    (-((out.log_pi - action) * advantage).sum(1).mean()).backward()
    reached = {n.split(".")[0] for n, p in model.named_parameters()
               if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == {"locator"}


@pytest.mark.parametrize("flags,words", [
    (["--dataset=catch", "--screen_size=2"], ["--screen_size", "at least 3"]),
    (["--screen_size=24"], ["--screen_size applies to --dataset=catch"]),
    (["--dataset=catch", "--num_glimpses=6"], ["--num_glimpses", "23", "got 6"]),
    (["--dataset=catch", "--model=fc"], ["--model=fc", "played by RAM"]),
    (["--dataset=catch", "--canvas_size=60"], ["--canvas_size"]),
    (["--dataset=catch", "--is_train=False", "--predict=x.png"], ["--predict", "Catch"]),
])
def test_a_flag_catch_cannot_run_with_is_one_line(flags, words):
    from utils import UserError
    with pytest.raises(UserError) as e:
        make_config(*flags)
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_catch_takes_the_papers_sensor_unless_told_otherwise():
    c = make_config("--dataset=catch")
    assert (c.patch_size, c.num_patches, c.core, c.num_glimpses, c.M) == (6, 3, "lstm", 23, 1)
    c = make_config("--dataset=catch", "--screen_size=12", "--patch_size=4", "--core=rnn")
    assert (c.patch_size, c.num_patches, c.core, c.num_glimpses) == (4, 3, "rnn", 11)


@pytest.mark.slow
def test_train_then_test_prints_the_catch_rate_of_the_fixed_test_games(tmp_path):
    """As a user runs it: one epoch on a small screen, then --is_train=False; both printed
    rates are counted again here by playing the 10,000 test games with the saved model."""
    flags = ["--dataset=catch", "--screen_size=6", "--batch_size=512", "--epochs=1",
             f"--ckpt_dir={tmp_path}"]
    run_main(tmp_path, *flags)
    out = run_main(tmp_path, *flags, "--is_train=False").stdout
    lines = [line for line in out.splitlines() if line.startswith("[*] Test Catch rate")]
    assert len(lines) == 2, out
    # main.py's random stream: --random_seed, the model built, then per batch of 4096 games
    # (main.eval_batch_size) l_0 and the policy's noise
    torch.manual_seed(1)
    ckpt = torch.load(os.path.join(tmp_path, "ram_5_6x6_2_k3_lstm_catch6_model_best.pth.tar"),
                      weights_only=False)
    model = RecurrentAttention(ModelConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    caught = 0
    with torch.no_grad():
        for game, _ in catch.get_test_loader(make_config(*flags), "cpu", 4096):
            caught += int(model(game, torch.empty(len(game), 2).uniform_(-1, 1)).R.sum())
    assert lines[0] == f"[*] Test Catch rate: {caught}/10000 ({caught / 100:.2f}%)"
    assert lines[1].startswith("[*] Test Catch rate, actions sampled: ")
