"""The paper's baselines (--model=fc, convnet) and a modern small convnet (--model=smallcnn),
trained and tested by RAM's own loop on the same batches: each looks at the whole image at once
and returns a Rollout with no glimpses, so that the hybrid loss reduces to the classifier's NLL.

The convnet follows the paper's description (section 4.1): one layer of 8 filters of 10x10 at
stride 5, a fully connected layer of 256 rectifier units, then the softmax (tfRAM's
params/conv.py has the same numbers).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Rollout


def no_glimpses(log_probas):
    """A Rollout of T = 0 glimpses: the classifier's log-probabilities alone."""
    B = len(log_probas)
    empty = log_probas.new_zeros(B, 0)
    return Rollout(log_probas, empty, empty, log_probas.new_zeros(B, 0, 2))


class FullyConnected(nn.Module):
    """The paper's "FC, 2 layers": x -> relu(fc1) -> relu(fc2) -> log softmax(fc3), with
    --hidden_size units in each layer (256, or the paper's 64)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        c, H = config, config.hidden_size
        self.fc1 = nn.Linear(c.channels * c.height * c.width, H)
        self.fc2 = nn.Linear(H, H)
        self.fc3 = nn.Linear(H, c.num_classes)

    def forward(self, x, l_0=None, num_glimpses=None):
        h = F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))
        return no_glimpses(F.log_softmax(self.fc3(h), dim=-1))


class ConvNet(nn.Module):
    """The paper's "Convolutional, 2 layers": relu(conv 8 x 10x10, stride 5) -> relu(fc of 256)
    -> log softmax(fc)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        c = config
        self.conv = nn.Conv2d(c.channels, 8, kernel_size=10, stride=5)
        rows, cols = ((n - 10) // 5 + 1 for n in (c.height, c.width))
        self.fc = nn.Linear(8 * rows * cols, 256)
        self.out = nn.Linear(256, c.num_classes)

    def forward(self, x, l_0=None, num_glimpses=None):
        h = F.relu(self.fc(F.relu(self.conv(x)).flatten(1)))
        return no_glimpses(F.log_softmax(self.out(h), dim=-1))


class SmallCNN(nn.Module):
    """Not the paper's: a small modern convnet, to say where RAM stands today. Two blocks of two
    3x3 convolutions (16 then 32 channels), each with batch norm and a rectifier, each block
    ending in a 2x2 max-pool; then the average over positions, whatever the image's size, and
    the softmax. The VGG pattern at MNIST's scale: batch norm lets Adam at RAM's rate train it,
    and the global average makes it as blind as RAM to where the digit is on a canvas."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        layers, c_in = [], config.channels
        for c_out in (16, 16, None, 32, 32, None):
            if c_out is None:
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(c_in, config.num_classes)

    def forward(self, x, l_0=None, num_glimpses=None):
        h = self.features(x).mean((2, 3))
        return no_glimpses(F.log_softmax(self.out(h), dim=-1))


BASELINES = {"fc": FullyConnected, "convnet": ConvNet, "smallcnn": SmallCNN}
