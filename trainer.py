"""Training and validation of RAM, top to bottom as the algorithm runs.

One epoch: for each batch, T glimpses from a random (or central) l_0, the hybrid loss
(classifier NLL + baseline MSE + REINFORCE), one Adam step. Then validation with M Monte-Carlo
runs per image, the LR schedule, early stopping and a crash-safe checkpoint.

The trainer is handed its model, its batches and whether it is the process that writes; it
knows neither the dataset nor how many processes train (main.py shards the batches and wraps
the model in DDP under torchrun; the sums below are over processes, and over one without).
"""
import dataclasses
import math
import os
import time

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import checkpoint
import utils
from model import Rollout, compiled, loss_terms
from utils import UserError


class Diverged(UserError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


def initial_location(n, init_loc, device):
    """l_0 for n rollouts: uniform in [-1, 1]^2 (the seed's), or the image centre."""
    if init_loc == "center":
        return torch.zeros(n, 2, device=device)
    return torch.empty(n, 2, device=device).uniform_(-1, 1)


def rollout(net, x, y, l_0, M=1):
    """T glimpses on x (B, ...) from l_0 (M * B, 2) and the hybrid loss against y (B,):
    (Rollout, Losses). With M > 1, M copies of each image, the outputs averaged over the
    copies as in the seed (log-probabilities, log pi and baselines alike)."""
    B = len(x)
    out = net(x, l_0)
    if M > 1:
        out = Rollout(*(v if v is None else v.view(M, B, *v.shape[1:]).mean(0) for v in out))
    return out, loss_terms(out, y)


def evaluate(run, net, loader, M, init_loc, device):
    """(loss, accuracy %, correct count) with M Monte-Carlo runs per image."""
    net.eval()
    loss_sum = correct = 0
    with torch.no_grad():
        for x, y in loader:
            _, losses = run(net, x, y, initial_location(M * len(x), init_loc, device), M)
            loss_sum += losses.total * len(x)
            correct += losses.R.sum()
    loss_sum, correct = utils.all_sum(loss_sum, correct, device=device)
    n, correct = loader.num_samples, int(correct)
    return loss_sum / n, 100 * correct / n, correct


class Trainer:
    """Adam on the hybrid loss, the seed's LR schedule and early stopping, one checkpoint an
    epoch. net: what the gradient flows through (DDP's wrapper of model under torchrun);
    master: whether this process writes; bar: whether it shows a progress bar (master's);
    quarters: a line at each quarter of an epoch instead (a --num_runs run's: several runs'
    bars cannot share a terminal, and lines read as well in a log)."""

    def __init__(self, config, model, train_loader, valid_loader, device, net=None,
                 master=True, bar=None, quarters=False):
        self.config, self.model, self.device, self.master = config, model, device, master
        self.bar = master if bar is None else bar
        self.quarters = quarters
        self.train_loader, self.valid_loader = train_loader, valid_loader
        self.net = net or model
        self.optimizer = utils.adam(model.parameters(), config.init_lr, device)
        # validation accuracy should go up: the seed steps on its negative with mode "min";
        # an absolute threshold of 0 makes "better" strictly higher, as for the best model
        # (the default relative one, on a negative number, took an equal accuracy as better).
        # --lr_decay < 1: tfRAM's schedule instead, x lr_decay every epoch, blind to validation
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(
            self.optimizer, config.lr_decay) if config.lr_decay < 1 else \
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, "min", patience=config.lr_patience, threshold=0,
                threshold_mode="abs")
        # --ema_decay: validation, the checkpoints' model_state and so test see a moving average
        # of the weights, less noisy than the weights REINFORCE leaves after each step
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(
            config.ema_decay), use_buffers=True) if config.ema_decay else None
        self.evaluated = self.ema.module if self.ema else model
        # --compile: the rollout and the loss as one compiled function (forward and backward)
        self.run = compiled(rollout, device) if config.compile else rollout
        # -inf, not the seed's 0: a first epoch at 0% must still leave a best checkpoint
        self.start_epoch, self.best_valid_acc, self.counter = 0, -math.inf, 0
        self.history = []  # a row per epoch, kept in the checkpoint and beside it as a csv
        self.plot_dir = os.path.join(config.plot_dir, utils.model_name(config))
        self.writer = None
        # the first batch's images, locations, classes and predictions, pickled with the epoch
        self.glimpses = None

    def train(self):
        c = self.config
        if self.master:
            checkpoint.save_config(c)
            if c.use_tensorboard:
                self.writer = SummaryWriter(os.path.join(c.logs_dir, utils.model_name(c)))
        print("\n[*] Train on {} samples, validate on {} samples".format(
            self.train_loader.num_samples, self.valid_loader.num_samples))
        for epoch in range(self.start_epoch, c.epochs):
            tic, lr = time.time(), self.optimizer.param_groups[0]["lr"]
            print("\nEpoch: {}/{} - LR: {:.6f}".format(epoch + 1, c.epochs, lr))
            train_loss, train_acc = self.train_one_epoch(epoch)
            if self.valid_loader.num_samples:
                valid_loss, valid_acc, _ = self.evaluate(self.valid_loader)
            else:  # --valid_size=0: the training figures stand in for validation
                valid_loss, valid_acc = train_loss, train_acc
            self.scheduler.step(*([] if c.lr_decay < 1 else [-valid_acc]))

            is_best = valid_acc > self.best_valid_acc
            msg = "train loss: {:.3f} - train acc: {:.3f}".format(train_loss, train_acc)
            if self.valid_loader.num_samples:
                msg += " - val loss: {:.3f} - val acc: {:.3f} - val err: {:.3f}".format(
                    valid_loss, valid_acc, 100 - valid_acc)
            else:
                msg += " (no validation set: the best epoch is the best training accuracy)"
            print(msg + (" [*]" if is_best else ""))
            self.counter = 0 if is_best else self.counter + 1
            self.best_valid_acc = max(valid_acc, self.best_valid_acc)
            # one step axis for both: training images seen
            self.log((epoch + 1) * self.train_loader.num_samples, valid_loss=valid_loss,
                     valid_acc=valid_acc)
            self.history.append(dict(
                epoch=epoch + 1, lr=lr, train_loss=float(train_loss), train_acc=float(train_acc),
                valid_loss=float(valid_loss) if self.valid_loader.num_samples else None,
                valid_acc=float(valid_acc) if self.valid_loader.num_samples else None,
                seconds=round(time.time() - tic, 2)))
            self.save(epoch + 1, is_best)
            if self.counter > c.train_patience:
                print("[!] No improvement in a while, stopping training.")
                break
        if self.writer:
            self.writer.close()

    def train_one_epoch(self, epoch):
        c, loader = self.config, self.train_loader
        self.model.train()
        loader.set_epoch(epoch)
        plot = c.plot_freq > 0 and epoch % c.plot_freq == 0
        loss_sum = correct = seen = said = 0  # said: the quarters of the epoch told so far
        shown = None  # the first batch's first images, drawn after the epoch
        recent = []  # the losses since the last look at them, left on the device till then
        tic = time.time()
        with tqdm(total=loader.local_samples, leave=False, disable=not self.bar) as pbar:
            for i, (x, y) in enumerate(loader):
                l_0 = initial_location(len(x), c.init_loc, self.device)
                out, losses = self.run(self.net, x, y, l_0)
                loss = losses.total
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if c.max_grad_norm > 0:  # after DDP's all-reduce, so every process clips alike
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
                self.optimizer.step()
                if self.ema:
                    self.ema.update_parameters(self.model)

                recent.append(loss.detach().clone())  # a CUDA graph's next replay reuses it
                loss_sum += recent[-1] * len(x)
                correct += losses.R.sum()
                seen += len(x)
                if plot and i == 0 and out.locs.shape[1]:  # a baseline has no glimpses
                    shown = loader.replay(x, y)
                n = loader.local_samples
                quarter = 4 * seen // n if self.quarters and seen < n else said
                if (i + 1) % c.print_freq == 0 or seen == n or quarter > said:
                    # checked here, not every batch: reading a GPU's loss stalls it. A loss
                    # gone bad stops training before the epoch ends, so nothing bad is saved
                    self.check_finite(recent, epoch, i)
                    avg_loss, avg_acc = loss_sum.item() / seen, 100 * correct.item() / seen
                    figures = "{:.1f}s - loss: {:.3f} - acc: {:.3f}".format(
                        time.time() - tic, avg_loss, avg_acc)
                    pbar.set_description(figures)
                    pbar.update(seen - pbar.n)
                    if quarter > said:
                        said = quarter
                        print(f"{100 * seen // n}% of epoch {epoch + 1}: {seen}/{n} - {figures}")
                    self.log(epoch * loader.num_samples + seen * loader.world,
                             train_loss=avg_loss, train_acc=avg_acc)
        if shown is not None:
            self.glimpses = self.picture(loader, *shown, epoch)
        loss_sum, correct, seen = utils.all_sum(loss_sum, correct, seen, device=self.device)
        return loss_sum / seen, 100 * correct / seen

    def picture(self, loader, x, y, epoch):
        """What the epoch's pickles keep: the model as the checkpoint saves it, after the
        epoch, looking at x, with noise of its own drawn from the epoch's number, so that
        drawing leaves every training number as it was."""
        self.evaluated.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(epoch)
            out = self.evaluated(x, initial_location(len(x), self.config.init_loc, self.device))
        self.model.train()
        return loader.glimpses(x, y, out)

    def check_finite(self, recent, epoch, i):
        """Raises Diverged at the first non-finite loss of batches i+1-len(recent)..i."""
        bad = (~torch.isfinite(torch.stack(recent))).nonzero()
        if len(bad):
            j = int(bad[0])
            saved = checkpoint.saved_epoch(self.config)
            kept = f"epoch {saved} is kept in {checkpoint.path(self.config, False)}" if saved \
                else "no checkpoint was written"
            raise Diverged(f"the loss became {recent[j].item()} in epoch {epoch + 1}, batch "
                           f"{i + 2 - len(recent) + j}; training stopped and {kept}: try a "
                           "smaller --init_lr")
        recent.clear()

    def evaluate(self, loader):
        return evaluate(self.run, self.evaluated, loader, self.config.M, self.config.init_loc,
                        self.device)

    def log(self, step, **scalars):
        if self.writer:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)

    def save(self, epoch, is_best):
        """The epoch's checkpoint, written by the master process: every process's random
        state is gathered into it, for an exact resume."""
        states = utils.all_gather(utils.rng_state())
        state = {
            "epoch": epoch,
            "model_state": self.evaluated.state_dict(),
            "optim_state": self.optimizer.state_dict(),
            "best_valid_acc": self.best_valid_acc,
            "scheduler_state": self.scheduler.state_dict(),
            "counter": self.counter,
            "rng_state": states[0],
            "rng_states": states,
            "history": self.history,
            "params": utils.settings(self.config),
            "model_args": dataclasses.asdict(self.model.config),
            "data": checkpoint.data_record(self.config, self.train_loader),
        }
        if self.ema:  # the weights training goes on from, and how many steps are averaged
            state.update(train_state=self.model.state_dict(), ema_steps=int(self.ema.n_averaged))
        if self.master:
            checkpoint.save_epoch(state, self.config, is_best, self.glimpses, self.plot_dir)
        self.glimpses = None
