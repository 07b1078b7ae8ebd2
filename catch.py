"""Catch, the paper's game (section 4.2): B games as tensors, served as batches of episodes.

    python main.py --dataset=catch                     # train RAM to play it
    python main.py --dataset=catch --is_train=False    # its catch rate on 10,000 test games
    python catch.py                                    # the players that need no training

A size x size black screen. A 1-pixel ball starts on the top row at a uniformly random column
and falls one row a step, moving sideways dx = cos(angle) / cos(45 deg) columns a step (angle
uniform in [45, 135] degrees, so |dx| <= 1), bouncing off the side walls; it is drawn at its
position rounded to the nearest column. A 2-pixel paddle on the bottom row starts at a
uniformly random place and each step moves left, stays or moves right, clamped at the walls.
After size - 1 steps the ball is on the bottom row: reward 1 if the paddle is under it, else
0, and nothing before. The agent sees each frame before it acts: frames with the ball on rows
0..size-2, one action after each.

A batch is a Catch of B games started from (ball column, dx, paddle) each. Training games are
new every epoch, drawn from (random_seed, epoch); validation and test games are fixed, drawn
from seeds of their own, as the canvases' are.
"""
import math

import numpy as np
import torch

from data_loader import Shards
from modules import Retina
from utils import UserError

ACTIONS = ("left", "stay", "right")  # action a moves the paddle a - 1 columns
GAME_SEEDS = {"valid": 4_2_1406, "test": 2014_0402}  # fixed: everyone's test games are the same
PADDLE = 2


class Catch:
    """B games of Catch, stepped together: no Python loop over the games.

    start (B, 3) float: each game's ball column, dx and the paddle's left column. The ball's
    position is a float (x, row); the paddle's left column a long in 0..size-2. With record,
    trace keeps (ball column, ball row, paddle) before each step, for the pictures (training
    games skip it). The agent sees frames normalised by (mean, std)."""

    def __init__(self, start, size, record=False, normalisation=(0.0, 1.0)):
        self.size, self.start, self.record = size, start, record
        self.normalisation = normalisation
        self.x, self.dx = start[:, 0].clone(), start[:, 1].clone()
        self.paddle = start[:, 2].long()
        self.row = 0
        self.trace = []

    def __len__(self):
        return len(self.x)

    @property
    def steps(self):
        """Steps in an episode: the ball falls from row 0 to row size - 1."""
        return self.size - 1

    def column(self):
        """The ball's column: its position rounded to the nearest (half up)."""
        return (self.x + 0.5).floor().long().clamp_(0, self.size - 1)

    def frame(self):
        """The screen (B, 1, size, size) as the agent sees it: (1 - mean) / std at the ball and
        the paddle, -mean / std elsewhere."""
        mean, std = self.normalisation
        return render(self.column(), self.row, self.paddle, self.size).sub_(mean).div_(std)

    def step(self, a):
        """Moves the paddle by a - 1 (a (B,) long in 0, 1, 2), then the ball one row."""
        if self.record:
            self.trace.append(torch.stack([self.column(), torch.full_like(self.paddle, self.row),
                                           self.paddle], 1))
        self.paddle = (self.paddle + a - 1).clamp_(0, self.size - PADDLE)
        x, wall = self.x + self.dx, self.size - 1
        bounced = (x < 0) | (x > wall)
        self.x = torch.where(x < 0, -x, torch.where(x > wall, 2 * wall - x, x))
        self.dx = torch.where(bounced, -self.dx, self.dx)
        self.row += 1

    def reward(self):
        """(B,) float: 1 where the ball, now on the bottom row, is above the paddle."""
        offset = self.column() - self.paddle
        return ((offset >= 0) & (offset < PADDLE)).float()

    def history(self):
        """(B, steps, 3) long: (ball column, ball row, paddle) before each step so far."""
        return torch.stack(self.trace, 1)


def seed_of(key):
    """A generator's seed from a list of integers (the canvases' way)."""
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def starts(n, size, seed):
    """n games' starts (n, 3) float, drawn from seed alone."""
    g = torch.Generator().manual_seed(seed)
    column = torch.randint(size, (n,), generator=g).float()
    angle = torch.empty(n).uniform_(45, 135, generator=g)
    dx = torch.cos(torch.deg2rad(angle)) / math.cos(math.radians(45))
    paddle = torch.randint(size - PADDLE + 1, (n,), generator=g).float()
    return torch.stack([column, dx, paddle], 1)


def chase(game):
    """The hand-written player: the whole screen seen, the paddle moved toward the ball's column
    (its left pixel under the ball unless the ball is already above it)."""
    offset = game.column() - game.paddle
    return torch.where(offset < 0, 0, torch.where(offset >= PADDLE, 2, 1))


def play_by_hand(policy, start, size, generator=None):
    """(B,) rewards of a player that needs no training: chase, or "random" (uniform actions)."""
    game = Catch(start, size)
    for _ in range(game.steps):
        if policy == "random":
            a = torch.randint(len(ACTIONS), (len(game),), generator=generator)
        else:
            a = policy(game)
        game.step(a.to(game.paddle.device))
    return game.reward()


class Episodes(Shards):
    """Batches of games: (Catch, None) each, the Batches interface of data_loader.py.

    Training draws num_samples new games each epoch from (seed, epoch); with fixed_seed the
    games are drawn once. Under torchrun each process plays its strided share."""

    control = True  # the model acts at every step; the reward is the game's
    metric = "Catch rate"
    classes = list(ACTIONS)
    # a lit pixel reads 56: the widest patch averages 4x4 pixels, where the ball then reads
    # 3.5, about a normalised digit's stroke; at 1 it read 1/16 there and the reward's
    # gradient hardly moved the glimpse network (RESULTS.md#catch)
    normalisation = (0.0, 1 / 56)

    def __init__(self, num_samples, batch_size, size, device, seed=0, fixed_seed=None):
        self.n, self.batch_size, self.size, self.device = num_samples, batch_size, size, device
        self.seed, self.fixed_seed = seed, fixed_seed
        self.set_epoch(0)

    @property
    def num_samples(self):
        return self.n

    @property
    def image_shape(self):
        return (1, self.size, self.size)

    def set_epoch(self, epoch):
        key = [self.fixed_seed] if self.fixed_seed is not None else [self.seed, epoch, 2]
        self.start = starts(self.n, self.size, seed_of(key)).to(self.device)

    def __iter__(self):
        order = self.share(torch.arange(self.n, device=self.device))
        for i in range(0, len(order), self.batch_size):
            yield Catch(self.start[order[i:i + self.batch_size]], self.size,
                        normalisation=self.normalisation), None

    def replay(self, game, _):
        """The first 9 games of a batch, from their starts, to be played again."""
        return Catch(game.start[:9], self.size, record=True,
                     normalisation=self.normalisation), None

    def glimpses(self, game, _, out):
        """What the pickles keep of a batch's first 9 games: their screens before each step
        (9, T, 1, S, S), the glimpses' locations, the actions taken and whether each caught."""
        n = min(9, len(game))
        screens = torch.stack([render(*h.unbind(1), self.size) for h in
                               game.history()[:n].unbind(1)], 1)
        return (screens.cpu().numpy(), out.locs[:n].detach().cpu().numpy(),
                [a.tolist() for a in out.actions[:n].cpu()],
                ["caught" if r else "missed" for r in out.R[:n].tolist()])

    def tracked(self, model, l_0):
        """(frames whose smallest patch holds the ball, frames) over these games played by
        model greedily from locations l_0(n): how closely its glimpse follows the ball."""
        model.greedy, held, frames = True, 0, 0
        with torch.no_grad():
            for game, _ in self:
                out = model(game, l_0(len(game)))
                inside = ball_in_patch(game.start, out.locs, self.size, model.config.patch_size)
                held, frames = held + int(inside.sum()), frames + inside.numel()
        return held, frames


def ball_path(start, size):
    """(B, steps, 2) long: the ball's (column, row) in each frame the agent sees; its path
    does not depend on the paddle."""
    game, path = Catch(start, size), []
    for row in range(game.steps):
        path.append(torch.stack([game.column(), torch.full_like(game.paddle, row)], 1))
        game.step(torch.ones_like(game.paddle))
    return torch.stack(path, 1)


def ball_in_patch(start, locs, size, g):
    """(B, steps) bool: whether the g x g patch at locs (B, steps, 2), each frame's glimpse,
    holds that frame's ball, with the retina's arithmetic for a patch's pixels."""
    edge = torch.tensor([size, size], device=locs.device)
    top_left = Retina.centre(locs, edge.to(locs.dtype), edge) - g // 2
    offset = ball_path(start, size).to(locs.device) - top_left
    return ((offset >= 0) & (offset < g)).all(-1)


def render(column, row, paddle, size):
    """Screens (B, 1, S, S): 1 at the ball (column (B,), row (B,) or one for all) and at the
    paddle (its left column (B,)), 0 elsewhere."""
    B, dev = len(column), column.device
    ball = row * size + column
    paddle = (size - 1) * size + paddle.unsqueeze(1) + torch.arange(PADDLE, device=dev)
    screen = torch.zeros(B, size * size, device=dev)
    screen.scatter_(1, ball.unsqueeze(1), 1.0).scatter_(1, paddle, 1.0)
    return screen.view(B, 1, size, size)


# ------------------------------------------------------------------------------- the interface
TRAIN_GAMES, VALID_GAMES, TEST_GAMES = 25_600, 2_000, 10_000


# Catch's own defaults, for the flags not given: the sensor and core the paper's game was
# played with (3 scales of 6x6, an LSTM), as in both ports; then the training that learns it
# within an hour on 2 cores (RESULTS.md#catch): a steadier glimpse (a wide one shifts the
# screen under the sensor from frame to frame), more games a batch, a faster then decaying rate
CATCH_DEFAULTS = dict(patch_size=6, num_patches=3, glimpse_scale=2, core="lstm", std=0.05,
                      batch_size=128, init_lr=5e-4, lr_decay=0.97, epochs=60)


def check_flags(config):
    """--dataset=catch: its defaults where a flag was not given, and what it cannot run with."""
    given = getattr(config, "_given", set())
    for k, v in CATCH_DEFAULTS.items():
        if k not in given:
            setattr(config, k, v)
    if config.screen_size is None:
        config.screen_size = 24
    if config.screen_size < 3:
        raise UserError(f"--screen_size must be at least 3 (a 2-pixel paddle that can move), "
                        f"got {config.screen_size}")
    steps = config.screen_size - 1
    if "num_glimpses" in given and config.num_glimpses != steps:
        raise UserError(f"--num_glimpses is the game's length with --dataset=catch: one "
                        f"glimpse a frame, {steps} on a {config.screen_size}x"
                        f"{config.screen_size} screen (got {config.num_glimpses})")
    config.num_glimpses = steps
    config.M = 1  # an episode is played once; its actions are the most likely at test
    if config.model != "ram":
        raise UserError(f"--model={config.model} classifies images: Catch is played by RAM")
    if config.compile:
        raise UserError("--compile=True does not compile a game's rollout yet: leave it off "
                        "with --dataset=catch")
    if config.predict is not None:
        raise UserError("--predict classifies images: test a Catch agent with "
                        "--is_train=False")


def get_train_valid_loader(config, device, eval_batch_size=None):
    """(train, valid) episodes: new training games every epoch, a fixed set for validation."""
    train = Episodes(TRAIN_GAMES, config.batch_size, config.screen_size, device,
                     seed=config.random_seed)
    valid = Episodes(VALID_GAMES, eval_batch_size or config.batch_size, config.screen_size,
                     device, fixed_seed=GAME_SEEDS["valid"])
    return train, valid


def get_test_loader(config, device, batch_size):
    """The 10,000 fixed test games."""
    return Episodes(TEST_GAMES, batch_size, config.screen_size, device,
                    fixed_seed=GAME_SEEDS["test"])


def main():
    """The random and the hand-written players' catch rates on the 10,000 test games."""
    start = starts(TEST_GAMES, 24, seed_of([GAME_SEEDS["test"]]))
    for name, policy, g in (("random actions", "random", torch.Generator().manual_seed(1)),
                            ("chase (sees the whole screen)", chase, None)):
        caught = int(play_by_hand(policy, start, 24, g).sum())
        print(f"[*] {name}: {caught}/{TEST_GAMES} ({100 * caught / TEST_GAMES:.2f}%)")


if __name__ == "__main__":
    main()
