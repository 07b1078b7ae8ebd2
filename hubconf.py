"""torch.hub entry points: the shipped models, by task (the field's way to hand a model on).

    import torch
    model = torch.hub.load(".", "mnist", source="local")        # from a clone of this repository
    model.data["classes"], model.data["normalisation"]          # what its inputs must be
    x = (images / 255 - mean) / std                               # (B, 1, 28, 28)
    out = model(x.repeat(10, 1, 1, 1), torch.rand(10 * len(x), 2) * 2 - 1)  # M = 10 rollouts
    p = out.log_probas.exp().view(10, len(x), -1).mean(0)         # class probabilities

    agent = torch.hub.load(".", "catch", source="local")          # the game's agent
    import catch                                                  # the game, from the clone
    game = catch.Catch(catch.starts(100, 24, seed=0), 24, normalisation=agent.data["normalisation"])
    agent(game, torch.rand(100, 2) * 2 - 1).R.mean()              # the share of balls caught

Each returns RecurrentAttention in eval mode, with .data: the checkpoint's record of its
training data (classes, normalisation, image shape).
"""
import os

from checkpoint import load_weights, read, trained_data
from model import ModelConfig, RecurrentAttention

dependencies = ["torch"]
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ckpt", "shipped")


def shipped(name):
    """The shipped model <name>_model_best.pth.tar, ready to run."""
    file = os.path.join(SHIPPED, name + "_model_best.pth.tar")
    ckpt = read(file, "cpu")
    model = RecurrentAttention(ModelConfig(**ckpt["model_args"]))
    load_weights(model, ckpt["model_state"], file)
    model.data = trained_data(ckpt, ckpt.get("params"))
    return model.eval()


def mnist():
    """28x28 MNIST, 6 glimpses of 8x8 (the seed's settings): 0.67% test error."""
    return shipped("ram_6_8x8_2")


def translated():
    """60x60 translated MNIST, 8 glimpses of 3 scales of 12x12, LSTM core: 1.11%."""
    return shipped("ram_8_12x12_2_k3_lstm_translated60")


def cluttered60():
    """60x60 cluttered MNIST (4 pieces), 8 glimpses of 3 scales of 12x12, LSTM core: 2.92%."""
    return shipped("ram_8_12x12_2_k3_lstm_cluttered60")


def cluttered100():
    """100x100 cluttered MNIST (8 pieces), 8 glimpses of 4 scales of 12x12, LSTM core: 7.70%."""
    return shipped("ram_8_12x12_2_k4_lstm_cluttered100")


def catch():
    """Catch on a 24x24 screen, one glimpse of 3 scales of 6x6 a frame, LSTM core: 97.14% of
    the 10,000 test games caught."""
    return shipped("ram_23_6x6_2_k3_lstm_catch24")
