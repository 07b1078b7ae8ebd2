"""The paper's baselines (--model=fc, convnet) and its random-glimpse RAM, against plain
references: what they compute, what they cost, where their gradients go."""
import math

import pytest
import torch
import torch.nn.functional as F

from baselines import ConvNet, FullyConnected
from bench import multiply_adds
from model import ModelConfig, RecurrentAttention, loss_terms


def test_fully_connected_is_two_rectifier_layers_and_a_softmax():
    torch.manual_seed(0)
    net = FullyConnected(ModelConfig(model="fc", hidden_size=64, channels=1, height=20,
                                     width=30, num_classes=7))
    x = torch.randn(5, 1, 20, 30)
    h = torch.relu(x.reshape(5, -1) @ net.fc1.weight.t() + net.fc1.bias)
    h = torch.relu(h @ net.fc2.weight.t() + net.fc2.bias)
    expected = torch.log_softmax(h @ net.fc3.weight.t() + net.fc3.bias, 1)
    out = net(x)
    torch.testing.assert_close(out.log_probas, expected)
    assert out.log_pi.shape == out.b.shape == (5, 0) and out.locs.shape == (5, 0, 2)
    assert net.fc1.in_features == 600 and net.fc2.in_features == 64


@pytest.mark.parametrize("side,cells", [(28, 4), (60, 11), (100, 19)])
def test_convnet_is_the_papers(side, cells):
    """8 filters of 10x10 at stride 5 (4x4, 11x11, 19x19 positions on 28, 60, 100 px), then
    256 rectifier units and the softmax."""
    torch.manual_seed(1)
    net = ConvNet(ModelConfig(model="convnet", height=side, width=side))
    assert net.conv.weight.shape == (8, 1, 10, 10) and net.fc.in_features == 8 * cells * cells
    x = torch.randn(3, 1, side, side)
    h = torch.relu(F.conv2d(x, net.conv.weight, net.conv.bias, stride=5)).reshape(3, -1)
    h = torch.relu(h @ net.fc.weight.t() + net.fc.bias)
    torch.testing.assert_close(net(x).log_probas,
                               torch.log_softmax(h @ net.out.weight.t() + net.out.bias, 1))


@pytest.mark.parametrize("model", ["fc", "convnet", "smallcnn"])
def test_a_baseline_trains_on_the_classifier_loss_alone(model):
    """No glimpses, no b_t: the hybrid loss is the NLL, and it reaches every parameter."""
    from baselines import BASELINES
    torch.manual_seed(2)
    net = BASELINES[model](ModelConfig(model=model))
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    out = net(x)
    losses = loss_terms(out, y)
    assert losses.baseline.item() == losses.reinforce.item() == 0
    assert losses.total.item() == pytest.approx(F.nll_loss(out.log_probas, y).item(), rel=1e-6)
    losses.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_multiply_adds_per_image():
    """Counted on the models themselves, against the layers' sizes by hand."""
    x = torch.randn(2, 1, 28, 28)
    fc = FullyConnected(ModelConfig(model="fc"))
    assert multiply_adds(fc, x, None) == 784 * 256 + 256 * 256 + 256 * 10
    conv = ConvNet(ModelConfig(model="convnet"))
    assert multiply_adds(conv, x, None) == 16 * 8 * 100 + 128 * 256 + 256 * 10
    # RAM, T = 6: h2h multiplies h_1..h_5 only (h_0 = 0); mu_t is computed twice, once to
    # sample l_t in the loop and once, batched, for log pi
    ram = RecurrentAttention()
    glimpse = 64 * 128 + 2 * 128 + 2 * 128 * 256
    per_run = 6 * (glimpse + 256 * 256 + 2 * 256 * 2 + 256) + 5 * 256 * 256 + 256 * 10
    assert multiply_adds(ram, x, torch.zeros(2, 2)) == per_run
    # RAM's cost does not grow with the image; the baselines' does
    big = torch.randn(2, 1, 100, 100)
    assert multiply_adds(ram, big, torch.zeros(2, 2)) == per_run
    assert multiply_adds(FullyConnected(ModelConfig(model="fc", height=100, width=100)), big,
                         None) == 10000 * 256 + 256 * 256 + 256 * 10


def test_random_glimpses_ignore_the_policy():
    """--random_glimpses: l_1..l_{T-1} are uniform on (-1, 1), erf(eps / sqrt 2) of the same
    noise, whatever the locator's weights; no log pi, so REINFORCE trains nothing."""
    torch.manual_seed(3)
    model = RecurrentAttention(ModelConfig(random_glimpses=True, num_glimpses=4))
    x, y, l_0 = torch.randn(5, 1, 28, 28), torch.randint(0, 10, (5,)), torch.rand(5, 2) * 2 - 1
    eps = torch.randn(4, 5, 2)
    out = model(x, l_0, eps=eps)
    torch.testing.assert_close(out.locs[:, 1:], torch.erf(eps[:3] / math.sqrt(2)).transpose(0, 1))
    with torch.no_grad():
        model.locator.fc.weight.mul_(-3)
    assert torch.equal(model(x, l_0, eps=eps).locs, out.locs)
    assert torch.equal(out.log_pi, torch.zeros(5, 4))
    losses = loss_terms(out, y)
    losses.total.backward()
    assert model.locator.fc.weight.grad is None or not model.locator.fc.weight.grad.any()
    assert model.sensor.fc1.weight.grad.abs().sum() > 0
    u = torch.erf(torch.randn(20000) / math.sqrt(2))  # uniform: mean 0, variance 1/3
    assert abs(u.mean()) < 0.02 and abs(u.var() - 1 / 3) < 0.01 and u.abs().max() <= 1


def test_small_cnn_is_four_normalised_3x3_convolutions_and_an_average():
    """Against the same network written as plain functional calls (eval mode: batch norm
    with its running statistics), on a non-square image: the average makes any size work."""
    from baselines import SmallCNN
    torch.manual_seed(3)
    net = SmallCNN(ModelConfig(model="smallcnn", channels=3, height=20, width=36,
                               num_classes=4)).eval()
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32]
    for n in norms:  # running statistics other than the initial 0 and 1
        n.running_mean.uniform_(-0.5, 0.5)
        n.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 20, 36)
    h = x
    for i, (c, n) in enumerate(zip(convs, norms)):
        h = F.conv2d(h, c.weight, padding=1)
        h = (h - n.running_mean[:, None, None]) / torch.sqrt(n.running_var[:, None, None] +
                                                              n.eps)
        h = torch.relu(h * n.weight[:, None, None] + n.bias[:, None, None])
        if i % 2:
            h = F.max_pool2d(h, 2)
    assert h.shape == (2, 32, 5, 9)
    expected = torch.log_softmax(h.mean((2, 3)) @ net.out.weight.t() + net.out.bias, 1)
    torch.testing.assert_close(net(x).log_probas, expected)
    assert multiply_adds(net, x[:1], None) == (
        20 * 36 * 9 * (3 * 16 + 16 * 16) + 10 * 18 * 9 * (16 * 32 + 32 * 32) + 32 * 4)
