"""Throughput of RAM training and evaluation, this project's way and the seed's way, and the
multiply-adds per image (RAM's or a baseline's, --model).

    python bench.py                                   # defaults: batch 32, 1 scale, M=10
    python bench.py --batch_size=128 --num_patches=3  # the paper's multi-scale setting
    python bench.py --seed_style=True                 # the seed's way, for comparison
    python bench.py --epoch=True                      # also time one whole epoch
    python bench.py --epoch=True --dataset=translated --patch_size=12 --num_patches=3
    python bench.py --num_runs=2                      # 2 runs side by side: images/s in all

Prints images/s for training steps (forward, loss, backward, Adam) and for evaluation (M
Monte-Carlo rows per image, no autograd), the median of --repeats timed runs after a warm-up,
and the seconds per epoch they imply (54,000 training images + 6,000 x M rows). The digits
are random bytes in memory (canvases made from them as main.py makes them): speed does not
depend on what the digits are.
"""
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import config
import runs
from data_loader import Batches, Canvases
from main import build, eval_batch_size
from model import Rollout, compiled, loss_terms
from modules import Retina
from trainer import initial_location, rollout
from utils import UserError, error_exit

NUM_TRAIN, NUM_VALID = 54000, 6000


def multiply_adds(model, x, l_0):
    """Multiply-adds of model on images x (B, C, H, W) from l_0, per image and rollout: half
    the FLOPs torch counts in its matrix products and convolutions (the sensor's gathers and
    pooling are not counted)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping={
            torch.ops.aten.addmm_: inplace_addmm_flops}) as counter:
        model(x, l_0)
    return counter.get_total_flops() // 2 // len(x)


def inplace_addmm_flops(self_shape, a_shape, b_shape, *args, **kwargs):
    """FLOPs of addmm_ (torch counts only addmm): 2 m k n, as for a matrix product."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


class SeedRetina(Retina):
    """The seed's sensor: pad per patch, then a Python loop over the batch for every crop."""

    def foveate(self, x, l):
        B, C, H, W = x.shape
        phi = []
        for n in self.sizes:
            c = (0.5 * ((l + 1.0) * H)).long()  # the seed used H for both axes
            start = c  # in padded coordinates, == c - n // 2 in the image's
            xp = F.pad(x, (n // 2, n // 2, n // 2, n // 2))
            patch = torch.stack([xp[i, :, start[i, 1]:start[i, 1] + n, start[i, 0]:start[i, 0] + n]
                                 for i in range(B)])
            phi.append(F.avg_pool2d(patch, n // self.g) if n > self.g else patch)
        return torch.cat(phi, 1).view(B, -1)


def seed_rollout(model, x, l_t, T):
    """The seed's loop: one module call per glimpse, torch.distributions each step."""
    h_t = x.new_zeros(len(x), model.hidden_size)
    log_pi, b = [], []
    for _ in range(T):
        g_t = model.sensor(model.sensor.retina.foveate(x, l_t), l_t)
        h_t = model.rnn(g_t, h_t)
        mu = torch.tanh(model.locator.fc(h_t.detach()))
        l_t = torch.distributions.Normal(mu, model.std).rsample().detach()
        log_pi.append(torch.distributions.Normal(mu, model.std).log_prob(l_t).sum(1))
        b.append(model.baseliner(h_t))
        l_t = l_t.clamp(-1, 1)
    return Rollout(model.classifier(h_t), torch.stack(log_pi, 1), torch.stack(b, 1), None)


def seed_loader(batch_size, n, workers):
    """torchvision transforms per image in DataLoader workers, as the seed's MNIST loader."""
    from PIL import Image
    from torchvision import transforms

    class Bytes(torch.utils.data.Dataset):
        def __init__(self):
            self.data = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8)
            self.t = transforms.Compose([transforms.ToTensor(),
                                         transforms.Normalize((0.1307,), (0.3081,))])

        def __len__(self):
            return n

        def __getitem__(self, i):
            return self.t(Image.fromarray(self.data[i].numpy(), mode="L")), i % 10

    return torch.utils.data.DataLoader(Bytes(), batch_size=batch_size, shuffle=True,
                                       num_workers=workers)


def get_args(argv=None):
    """main.py's flags (the model, the data, the device), and the benchmark's own."""
    p = config.make_parser("Throughput of RAM training and evaluation: main.py's flags, and")
    own = p.add_argument_group("Benchmark")
    own.add_argument("--seed_style", type=config.str2bool, default=False,
                     help="the seed's way: a Python loop over the batch per crop, per-image "
                          "transforms in DataLoader workers (28x28 only)")
    own.add_argument("--steps", type=int, default=40, help="timed steps per run")
    own.add_argument("--repeats", type=int, default=5, help="timed runs; the median is given")
    own.add_argument("--epoch", type=config.str2bool, default=False,
                     help="also time one whole epoch (train + validation), batches made as "
                          "main.py makes them")
    args = config.folders(p.parse_args(argv))
    try:
        config.check(args)
        if args.dataset == "folder":
            raise UserError("bench.py times mnist, translated or cluttered (random digits)")
        if args.seed_style and (args.dataset, args.core, args.model) != ("mnist", "rnn", "ram"):
            raise UserError("--seed_style=True is the seed's 28x28 MNIST with its rnn core only")
    except UserError as e:
        error_exit(f"bench.py: error: {e}", 1)
    args.size = 28 if args.dataset == "mnist" else args.canvas_size
    return args


def loaders(cfg, eval_bs, device):
    """Training and validation batches of this project's kind, from random digits in memory."""
    digits = torch.randint(0, 256, (NUM_TRAIN + NUM_VALID, 1, 28, 28), dtype=torch.uint8,
                           device=device)
    labels = torch.randint(0, 10, (len(digits),), device=device)
    split = (range(NUM_TRAIN), range(NUM_TRAIN, len(digits)))
    if cfg.dataset == "mnist":
        return [Batches(digits, labels, idx, bs, shuffle=train)
                for idx, bs, train in zip(split, (cfg.batch_size, eval_bs), (True, False))]
    return [Canvases(digits, labels, idx, bs, cfg.size, cfg.num_clutter, cfg.clutter_size,
                     shuffle=train, fixed_seed=None if train else 0)
            for idx, bs, train in zip(split, (cfg.batch_size, eval_bs), (True, False))]


def main():
    cfg = get_args()
    if cfg.num_runs == 1:
        torch.set_num_threads(runs.threads(cfg))  # as main.py trains
        measure(cfg)
        return
    n = runs.threads(cfg)
    rates = runs.in_processes(measure, runs.configs(cfg), n)
    train, evals = (sum(r) for r in zip(*rates))
    print(f"{cfg.num_runs} runs side by side, a process each, {n} thread{'s' * (n > 1)} each: "
          f"train {train:,.0f} img/s   eval {evals:,.0f} rows/s in all")


def measure(cfg):
    """Prints (and returns) this process's training images/s and evaluation rows/s."""
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build(cfg, (1, cfg.size, cfg.size), [str(i) for i in range(10)], device)
    if cfg.seed_style:
        model.sensor.retina = SeedRetina(cfg.patch_size, cfg.num_patches, cfg.glimpse_scale)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, fused=not cfg.seed_style)
    T = cfg.num_glimpses

    def seed_losses(net, x, y, l_0, M=1):
        return None, loss_terms(seed_rollout(net, x, l_0, T), y.repeat(M))
    run = seed_losses if cfg.seed_style else compiled(rollout, device) if cfg.compile \
        else rollout  # the trainer's, compiled as --compile does

    def losses(x, y, M=1):
        return run(model, x, y, initial_location(M * len(x), cfg.init_loc, device), M)[1]

    def train_step(x, y):
        loss = losses(x, y).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def eval_step(x, y):
        # both without autograd (the seed's final validate() is under torch.no_grad());
        # the seed's batches are --batch_size images, this project's as main.py sizes them
        with torch.no_grad():
            if cfg.seed_style:
                losses(x.repeat(cfg.M, 1, 1, 1), y.repeat(cfg.M)).R.sum().item()
            else:  # as the trainer: M rows per image, one padded copy of it
                losses(x, y, cfg.M).R.sum().item()

    eval_bs = cfg.batch_size if cfg.seed_style else eval_batch_size(cfg)

    def timed(step, bs):
        x = torch.randn(bs, 1, cfg.size, cfg.size, device=device)
        y = torch.randint(0, 10, (bs,), device=device)
        for _ in range(3):
            step(x, y)
        rates = []
        for _ in range(cfg.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(cfg.steps):
                step(x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates.append(bs * cfg.steps / (time.perf_counter() - t))
        return statistics.median(rates)

    name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    style = "seed-style" if cfg.seed_style else "this project"
    what = f"{cfg.num_patches} scale(s) of {cfg.patch_size}x{cfg.patch_size}, {T} glimpses, " \
        f"{cfg.core} core, M={cfg.M}" if cfg.model == "ram" else f"the {cfg.model} baseline"
    print(f"{style} on {name}: {cfg.dataset} {cfg.size}x{cfg.size}, batch {cfg.batch_size}, "
          + what + (", compiled" if cfg.compile else "") + (", autograd" if cfg.autograd else ""))
    x1 = torch.zeros(1, 1, cfg.size, cfg.size, device=device)
    print(f"multiply-adds per image: {multiply_adds(model, x1, torch.zeros(1, 2, device=device)):,}"
          f" a rollout (test runs M={cfg.M})")
    train_ips = timed(train_step, cfg.batch_size)
    eval_ips = timed(eval_step, eval_bs) * cfg.M  # rows per second
    est = NUM_TRAIN / train_ips + NUM_VALID * cfg.M / eval_ips
    print(f"train: {train_ips:,.0f} img/s   eval: {eval_ips:,.0f} rows/s   "
          f"model-only epoch: {est:.1f} s")

    if cfg.epoch:  # data loading included, as an epoch really runs
        if cfg.seed_style:
            train = seed_loader(cfg.batch_size, NUM_TRAIN, cfg.num_workers)
            valid = seed_loader(cfg.batch_size, NUM_VALID, cfg.num_workers)
        else:
            train, valid = loaders(cfg, eval_bs, device)
        t = time.perf_counter()
        for x, y in train:
            train_step(x.to(device), y.to(device))
        t_train = time.perf_counter() - t
        for x, y in valid:
            eval_step(x.to(device), y.to(device))
        t_all = time.perf_counter() - t
        print(f"one whole epoch: {t_all:.1f} s (train {t_train:.1f} s, "
              f"validation {t_all - t_train:.1f} s)")
    return train_ips, eval_ips


if __name__ == "__main__":
    main()
