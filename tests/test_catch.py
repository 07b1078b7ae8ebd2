"""Catch: the game against a plain per-game reference, its seeded episodes, the agent's loss
(the actions trained by REINFORCE alone, on the critic's advantage), the tracking figure, the
full-screen agent, its flags, and the CLI as a user runs it."""
import math
import os

import numpy as np
import pytest
import torch

import catch
import model
from bench import multiply_adds
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


def test_the_agent_sees_frames_normalised_as_its_episodes_say():
    start = starts(5, 9, seed=4)
    raw = Catch(start, 9).frame()
    seen = Catch(start, 9, normalisation=(0.25, 0.5)).frame()
    assert torch.equal(seen, (raw - 0.25) / 0.5)
    episodes = Episodes(5, 5, 9, "cpu", fixed_seed=1)
    game, _ = next(iter(episodes))
    mean, std = Episodes.normalisation
    assert torch.equal(game.frame(), (Catch(game.start, 9).frame() - mean) / std)
    assert game.frame().max().item() == pytest.approx(56)  # a lit pixel


def test_the_ball_in_the_smallest_patch_against_a_plain_count():
    """ball_in_patch, each frame's g x g patch at l (the retina's centre, floor((l + 1) / 2 *
    size), its corner centre - g // 2) against the ball's path played one game at a time."""
    size, g, n = 11, 3, 40
    start = starts(n, size, seed=6)
    gen = torch.Generator().manual_seed(0)
    locs = torch.rand(n, size - 1, 2, generator=gen) * 2 - 1
    locs[:8] = torch.tensor([-1.0, 1.0])  # corners: patches partly off the screen
    inside = catch.ball_in_patch(start, locs, size, g)
    hits = 0
    for i in range(n):
        trace, _, _ = reference_episode(*start[i, :2].tolist(), int(start[i, 2]),
                                        [1] * (size - 1), size)
        for t, (column, row, _) in enumerate(trace):
            cx, cy = (int(f32(0.5) * ((f32(v) + f32(1)) * f32(size))) for v in locs[i, t].tolist())
            expected = cx - g // 2 <= column < cx - g // 2 + g and cy - g // 2 <= row < cy - g // 2 + g
            assert bool(inside[i, t]) == expected, (i, t)
            hits += expected
    assert 0 < hits < inside.numel()  # both cases seen


def test_the_full_screen_agent_sees_every_pixel_wherever_it_looks():
    model_ = agent(full_screen=True, height=8, width=8)
    assert model_.sensor.fc1.in_features == 64
    x = torch.rand(2, 1, 8, 8)
    for l in (torch.zeros(2, 2), torch.tensor([[-1.0, 1.0], [0.5, -0.25]])):
        assert torch.equal(model_.sensor.retina.foveate(x, l), x.flatten(1))
    out = model_(Catch(starts(4, 8, seed=5), 8), torch.zeros(4, 2))
    assert out.actions.shape == (4, 7)


def test_multiply_adds_per_frame_of_ram_and_of_the_full_screen_agent():
    """Per frame of a 24x24 game: the glimpse network, the LSTM (its hidden product at every
    step: h_0 = 0 is multiplied too), the location policy and the action network twice each
    (once to act, once batched for the loss), the baseline once."""
    for full, phi in ((False, 3 * 36), (True, 576)):
        model_ = RecurrentAttention(ModelConfig(patch_size=6, num_patches=3, core="lstm",
                                                num_classes=3, control=True, height=24,
                                                width=24, full_screen=full)).eval()
        per_frame = (phi * 128 + 2 * 128 + 2 * 128 * 256 + 2 * 256 * 1024 + 2 * 256 * 2
                     + 2 * 256 * 3 + 256)
        game = Catch(starts(4, 24, seed=1), 24)
        assert multiply_adds(model_, game, torch.zeros(4, 2)) == 23 * per_frame


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


def plain_gae(b, R, lam):
    """A_t = sum_k lam^k (b_{t+k+1} - b_{t+k}), b_{T+1} = R, by a loop over the games and steps."""
    B, T = b.shape
    A = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        values = [float(v) for v in b[i]] + [float(R[i])]
        for t in range(T):
            A[i, t] = sum(lam ** k * (values[t + k + 1] - values[t + k]) for k in range(T - t))
    return A


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_the_advantage_is_gae_of_the_critic(lam):
    b, R = torch.rand(6, 9, dtype=torch.float64), (torch.rand(6) > 0.5).double()
    torch.testing.assert_close(model.advantages(b, R, lam), plain_gae(b, R, lam))
    if lam == 1.0:  # the paper's R - b_t
        torch.testing.assert_close(model.advantages(b, R, lam), R[:, None] - b)


def test_the_actions_are_trained_by_reinforce_on_the_advantage_and_nothing_else():
    """d loss / d log pi(a_t) = -A_t / B at the action taken, A_t GAE(0.95) of b_t, plus the
    entropy bonus's share at every action; no supervised term; the critic's MSE reaches the
    baseline, core and glimpse networks and nothing else."""
    model_ = agent()
    out = model_(Catch(starts(16, 8, seed=2), 8), torch.zeros(16, 2))
    out.log_probas.retain_grad()
    losses = loss_terms(out, None)
    assert losses.action.item() == 0 and torch.equal(losses.R, out.R)
    losses.total.backward(retain_graph=True)
    B, T = out.actions.shape
    A = plain_gae(out.b.detach(), out.R, model.GAE_LAMBDA).float()
    logp = out.log_probas.detach()
    # entropy -sum p log p, meaned over the B T steps: d/d log p_k = -p_k (log p_k + 1) / (B T)
    expected = model.ENTROPY_BONUS * logp.exp() * (logp + 1) / (B * T)
    expected.scatter_add_(2, out.actions.unsqueeze(2), (-A / B).unsqueeze(2))
    torch.testing.assert_close(out.log_probas.grad, expected, rtol=1e-5, atol=1e-8)
    # the plain figures: mean over games of sum_t -(log pi(l_t) + log pi(a_t)) A_t, the mean
    # entropy, the MSE
    torch.testing.assert_close(losses.reinforce, (-out.log_pi * A).sum(1).mean())
    torch.testing.assert_close(losses.entropy, -(logp.exp() * logp).sum(-1).mean())
    assert losses.baseline.item() == pytest.approx(((out.b - out.R[:, None]) ** 2).mean().item())
    model_.zero_grad()
    losses.baseline.backward()
    reached = {n.split(".")[0] for n, p in model_.named_parameters()
               if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == {"baseliner", "rnn", "sensor"}


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
    assert (c.std, c.batch_size, c.init_lr, c.lr_decay, c.epochs) == (0.05, 128, 5e-4, 0.97, 60)
    c = make_config("--dataset=catch", "--std=0.17", "--batch_size=32", "--epochs=3")
    assert (c.std, c.batch_size, c.epochs, c.init_lr) == (0.17, 32, 3, 5e-4)
    assert make_config().std == 0.17 and make_config().epochs == 200  # the classifiers' own
    c = make_config("--dataset=catch", "--screen_size=12", "--patch_size=4", "--core=rnn")
    assert (c.patch_size, c.num_patches, c.core, c.num_glimpses) == (4, 3, "rnn", 11)


@pytest.mark.slow
def test_train_then_test_prints_the_catch_rate_of_the_fixed_test_games(tmp_path):
    """As a user runs it: one epoch on a small screen, then --is_train=False; the printed
    rates and the tracking figure are counted again here by playing the 10,000 test games
    with the saved model."""
    flags = ["--dataset=catch", "--screen_size=6", "--batch_size=512", "--epochs=1",
             f"--ckpt_dir={tmp_path}"]
    run_main(tmp_path, *flags)
    out = run_main(tmp_path, *flags, "--is_train=False").stdout
    lines = [line for line in out.splitlines() if line.startswith("[*] Test Catch rate")]
    assert len(lines) == 2, out
    # main.py's random stream: --random_seed, the model built, then per batch of 4096 games
    # (main.eval_batch_size) l_0 and the policy's noise: greedy, sampled, then greedy again
    torch.manual_seed(1)
    ckpt = torch.load(os.path.join(tmp_path, "ram_5_6x6_2_k3_lstm_catch6_model_best.pth.tar"),
                      weights_only=False)
    trained = RecurrentAttention(ModelConfig(**ckpt["model_args"]))
    trained.load_state_dict(ckpt["model_state"])
    trained.eval()
    test_games = catch.get_test_loader(make_config(*flags), "cpu", 4096)
    caught, held = [0, 0], 0
    with torch.no_grad():
        for i, greedy in enumerate((True, False)):
            trained.greedy = greedy
            for game, _ in test_games:
                caught[i] += int(trained(game, torch.empty(len(game), 2).uniform_(-1, 1)).R.sum())
        trained.greedy = True
        for game, _ in test_games:
            locs = trained(game, torch.empty(len(game), 2).uniform_(-1, 1)).locs
            held += int(catch.ball_in_patch(game.start, locs, 6, 6).sum())
    assert lines[0] == f"[*] Test Catch rate: {caught[0]}/10000 ({caught[0] / 100:.2f}%)"
    assert lines[1] == f"[*] Test Catch rate, actions sampled: {caught[1]}/10000 " \
        f"({caught[1] / 100:.2f}%)"
    assert f"[*] Ball in the smallest patch: {held}/50000 frames ({held / 500:.2f}%)" in out
