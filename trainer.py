"""Training, validation and test of RAM, top to bottom as the algorithm runs.

One epoch: for each batch, T glimpses from a random (or central) l_0, the hybrid loss
(classifier NLL + baseline MSE + REINFORCE), one Adam step. Then validation with M Monte-Carlo
runs per image, the LR schedule, early stopping and a crash-safe checkpoint.
"""
import math
import os
import pickle
import time

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

import utils
from model import RecurrentAttention, Rollout, compiled, loss_terms
from utils import UserError


class Diverged(UserError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


class Trainer:
    def __init__(self, config, device, train_loader=None, valid_loader=None, test_loader=None):
        self.config = config
        self.device = device
        self.train_loader, self.valid_loader, self.test_loader = (train_loader, valid_loader,
                                                                  test_loader)
        data = train_loader or test_loader  # what the trainer knows of the dataset: its loaders
        channels, num_classes = data.image_shape[0], data.num_classes
        # under torchrun: each process its shard; rank 0 alone prints and writes
        self.rank, self.world = utils.world()
        self.master = self.rank == 0
        for loader in (train_loader, valid_loader, test_loader):
            if loader is not None:
                loader.shard(self.rank, self.world, pad=loader is train_loader)
        self.num_glimpses, self.M = config.num_glimpses, config.M
        self.model_name = utils.model_name(config)
        self.plot_dir = os.path.join(config.plot_dir, self.model_name)

        self.model = RecurrentAttention(
            config.patch_size, config.num_patches, config.glimpse_scale, channels,
            config.glimpse_hidden, config.loc_hidden, config.std, config.hidden_size,
            num_classes, autograd=config.autograd, core=config.core).to(device)
        if self.rank:  # the same initial weights everywhere, then noise of its own
            torch.manual_seed(config.random_seed + 7919 * self.rank)
        self.net = self.model  # what training runs: DDP's wrapper under torchrun
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device] if device.type == "cuda" else None)
        # --ema_decay: validation, the checkpoints' model_state and so test see a moving average
        # of the weights, less noisy than the weights REINFORCE leaves after each step
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(
            config.ema_decay), use_buffers=True) if config.ema_decay and config.is_train else None
        self.evaluated = self.ema.module if self.ema else self.model
        # --compile: the rollout and the loss as one compiled function (forward and backward)
        self.run = compiled(self.rollout, device) if config.compile else self.rollout
        print("[*] Number of model parameters: {:,}".format(
            sum(p.numel() for p in self.model.parameters())))

        self.optimizer = utils.adam(self.model.parameters(), config.init_lr, device)
        # validation accuracy should go up: the seed steps on its negative with mode "min";
        # an absolute threshold of 0 makes "better" strictly higher, as for the best model
        # (the default relative one, on a negative number, took an equal accuracy as better).
        # --lr_decay < 1: tfRAM's schedule instead, x lr_decay every epoch, blind to validation
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(
            self.optimizer, config.lr_decay) if config.lr_decay < 1 else \
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, "min", patience=config.lr_patience, threshold=0,
                threshold_mode="abs")
        # -inf, not the seed's 0: a first epoch at 0% must still leave a best checkpoint
        self.start_epoch, self.best_valid_acc, self.counter = 0, -math.inf, 0
        self.writer = None
        self.glimpses = None  # the first batch's images and locations, pickled with the epoch

    # ---------------------------------------------------------------- the glimpse loop, once
    def initial_location(self, n):
        if self.config.init_loc == "center":
            return torch.zeros(n, 2, device=self.device)
        return torch.empty(n, 2, device=self.device).uniform_(-1, 1)

    def rollout(self, x, y, M=1):
        """T glimpses on x (B, ...) and the hybrid loss against y (B,): (Rollout, Losses). With
        M > 1 on M copies of each image, outputs averaged over the copies as in the seed
        (log-probabilities, log pi and baselines alike)."""
        B = x.shape[0]
        net = self.net if torch.is_grad_enabled() else self.evaluated  # DDP only where it syncs
        out = net(x, self.initial_location(M * B), self.num_glimpses)
        if M > 1:
            out = Rollout(*(v.view(M, B, *v.shape[1:]).mean(0) for v in out))
        return out, loss_terms(out, y)

    # ---------------------------------------------------------------- training
    def train(self):
        if self.config.resume:
            self.load_checkpoint(best=False, resume=True)
            if self.start_epoch >= self.config.epochs:
                raise UserError(f"the checkpoint has {self.start_epoch} epochs and --epochs="
                                f"{self.config.epochs} is the total: pass a larger --epochs")
        elif self.config.init_from:  # fine-tuning, or a warm restart: the weights alone
            self.load_checkpoint(path=self.config.init_from)
            self.start_epoch, self.best_valid_acc = 0, -math.inf
        if self.master:
            utils.save_config(self.config)
        if self.config.use_tensorboard and self.master:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(self.config.logs_dir, self.model_name))
        if torch.distributed.is_initialized():  # under torchrun
            print(f"[*] Training data-parallel on {self.world} processes ({utils.backend()}): "
                  f"{self.config.batch_size} images a batch each, "
                  f"{self.world * self.config.batch_size} in all")
        print("\n[*] Train on {} samples, validate on {} samples".format(
            self.train_loader.num_samples, self.valid_loader.num_samples))

        for epoch in range(self.start_epoch, self.config.epochs):
            print("\nEpoch: {}/{} - LR: {:.6f}".format(
                epoch + 1, self.config.epochs, self.optimizer.param_groups[0]["lr"]))
            train_loss, train_acc = self.train_one_epoch(epoch)
            if self.valid_loader.num_samples:
                valid_loss, valid_acc, _ = self.evaluate(self.valid_loader)
            else:  # --valid_size=0: the training figures stand in for validation
                valid_loss, valid_acc = train_loss, train_acc
            self.scheduler.step(*([] if self.config.lr_decay < 1 else [-valid_acc]))

            is_best = valid_acc > self.best_valid_acc
            msg = "train loss: {:.3f} - train acc: {:.3f} - val loss: {:.3f} - val acc: {:.3f}" \
                  " - val err: {:.3f}".format(train_loss, train_acc, valid_loss, valid_acc,
                                              100 - valid_acc)
            print(msg + (" [*]" if is_best else ""))
            self.counter = 0 if is_best else self.counter + 1
            self.best_valid_acc = max(valid_acc, self.best_valid_acc)
            # one step axis for both: training images seen
            self.log((epoch + 1) * self.train_loader.num_samples, valid_loss=valid_loss,
                     valid_acc=valid_acc)
            self.save_checkpoint(epoch + 1, is_best)
            if self.counter > self.config.train_patience:
                print("[!] No improvement in a while, stopping training.")
                break
        if self.writer:
            self.writer.close()

    def train_one_epoch(self, epoch):
        self.model.train()
        loader = self.train_loader
        loader.set_epoch(epoch)
        plot = self.config.plot_freq > 0 and epoch % self.config.plot_freq == 0
        loss_sum = correct = seen = 0
        recent = []  # the losses since the last look at them, left on the device till then
        tic = time.time()
        with tqdm(total=loader.local_samples, leave=False, disable=not self.master) as pbar:
            for i, (x, y) in enumerate(loader):
                out, losses = self.run(x, y)
                loss = losses.total
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip = self.config.max_grad_norm
                if clip > 0:  # after DDP's all-reduce, so every rank clips alike
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                self.optimizer.step()
                if self.ema:
                    self.ema.update_parameters(self.model)

                recent.append(loss.detach().clone())  # a CUDA graph's next replay reuses it
                loss_sum += recent[-1] * len(y)
                correct += losses.R.sum()
                seen += len(y)
                if plot and i == 0:
                    self.glimpses = (loader.pictures(x[:9]).cpu().numpy(),
                                     out.locs[:9].detach().cpu().numpy())
                if (i + 1) % self.config.print_freq == 0 or seen == loader.local_samples:
                    # checked here, not every batch: reading a GPU's loss stalls it. A loss
                    # gone bad stops training before the epoch ends, so nothing bad is saved
                    self.check_finite(recent, epoch, i)
                    avg_loss, avg_acc = loss_sum.item() / seen, 100 * correct.item() / seen
                    pbar.set_description("{:.1f}s - loss: {:.3f} - acc: {:.3f}".format(
                        time.time() - tic, avg_loss, avg_acc))
                    pbar.update(seen - pbar.n)
                    self.log(epoch * loader.num_samples + seen * self.world,
                             train_loss=avg_loss, train_acc=avg_acc)
        loss_sum, correct, seen = utils.all_sum(loss_sum, correct, seen, device=self.device)
        return loss_sum / seen, 100 * correct / seen

    def check_finite(self, recent, epoch, i):
        """Raises Diverged at the first non-finite loss of batches i+1-len(recent)..i."""
        bad = (~torch.isfinite(torch.stack(recent))).nonzero()
        if len(bad):
            j = int(bad[0])
            raise self.diverged(recent[j], epoch, i + 1 - len(recent) + j)
        recent.clear()

    def diverged(self, loss, epoch, i):
        saved = self.saved_epoch()
        kept = f"epoch {saved} is kept in {self.ckpt_path(False)}" if saved else \
            "no checkpoint was written"
        return Diverged(f"the loss became {loss.item()} in epoch {epoch + 1}, batch {i + 1}; "
                        f"training stopped and {kept}: try a smaller --init_lr")

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, loader):
        """(loss, accuracy %, correct count) with M Monte-Carlo runs per image."""
        self.evaluated.eval()
        loss_sum = correct = 0
        with torch.no_grad():
            for x, y in loader:
                _, losses = self.run(x, y, self.M)
                loss_sum += losses.total * len(y)
                correct += losses.R.sum()
        loss_sum, correct = utils.all_sum(loss_sum, correct, device=self.device)
        n, correct = loader.num_samples, int(correct)
        return loss_sum / n, 100 * correct / n, correct

    def test(self):
        ckpt = self.load_checkpoint(best=self.config.best)
        data = utils.trained_data(ckpt, self.config)
        loader = self.test_loader
        for what, trained, given in (("classes", data["classes"], loader.classes),
                                     ("CxHxW", data["image_shape"], loader.image_shape)):
            if list(trained) != list(given):
                raise UserError(f"the test set's {what} ({fmt(given)}) are not the model's "
                                f"({fmt(trained)}): test on data like its training data")
        loader.normalisation = tuple(data["normalisation"])  # its training data's statistics
        _, acc, correct = self.evaluate(loader)
        print("[*] Test Acc: {}/{} ({:.2f}%)".format(correct, loader.num_samples, acc))
        return acc

    def predict(self, files):
        """Prints, for each image the test loader serves (files, in order), its file, the
        predicted class and that class's probability averaged over M rollouts; keeps the
        first 9 images' glimpses in self.glimpses."""
        ckpt = self.load_checkpoint(best=self.config.best)
        classes = utils.trained_data(ckpt, self.config)["classes"]
        self.model.eval()
        names = iter(files)
        with torch.no_grad():
            for x, _ in self.test_loader:
                out, p = probabilities(self.model, x, self.initial_location(self.M * len(x)),
                                       self.num_glimpses)
                if self.glimpses is None:
                    self.glimpses = (self.test_loader.pictures(x[:9]).cpu().numpy(),
                                     out.locs[:9].cpu().numpy())
                for prob, k in zip(*p.max(1)):
                    print(f"{next(names)}\t{classes[k]}\t{prob:.4f}")

    # ---------------------------------------------------------------- records
    def log(self, step, **scalars):
        if self.writer:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)

    def save_glimpses(self, epoch):
        """g_<epoch>.p: [the first 9 images]; l_<epoch>.p: T arrays (9, 2), where glimpses
        1..T were taken (l_0 first), in [-1, 1]; and params.json, the run's settings, for
        plot_glimpses.py. Written with the epoch's checkpoint, so that only finished epochs
        have pickles."""
        imgs, locs = self.glimpses
        self.glimpses = None
        imgs = [imgs.squeeze(1) if imgs.shape[1] == 1 else imgs]
        locs = list(locs.transpose(1, 0, 2))
        for name, obj in ((f"g_{epoch}.p", imgs), (f"l_{epoch}.p", locs)):
            utils.atomic_write(os.path.join(self.plot_dir, name), lambda f: pickle.dump(obj, f))
        utils.save_json(vars(self.config), os.path.join(self.plot_dir, "params.json"))

    def ckpt_path(self, best):
        return utils.ckpt_path(self.config, best)

    def save_checkpoint(self, epoch, is_best):
        states = utils.all_gather(utils.rng_state())  # every process's, for an exact resume
        state = {
            "epoch": epoch,
            "model_state": self.evaluated.state_dict(),
            "optim_state": self.optimizer.state_dict(),
            "best_valid_acc": self.best_valid_acc,
            "scheduler_state": self.scheduler.state_dict(),
            "counter": self.counter,
            "rng_state": states[0],
            "rng_states": states,
            "params": vars(self.config),
            "data": {"normalisation": list(self.train_loader.normalisation),
                     "image_shape": list(self.train_loader.image_shape),
                     "classes": list(self.train_loader.classes)},
        }
        if self.ema:  # the weights training goes on from, and how many steps are averaged
            state.update(train_state=self.model.state_dict(), ema_steps=int(self.ema.n_averaged))
        if not self.master:
            return
        with utils.signals_held():  # Ctrl-C between the files would leave the best behind
            utils.save_torch(state, self.ckpt_path(best=False))
            if is_best:
                utils.save_torch(state, self.ckpt_path(best=True))
            if self.glimpses is not None:
                self.save_glimpses(epoch)

    def saved_epoch(self):
        """The epoch the latest checkpoint on disk holds (None if none): read from the file,
        not remembered, so that an interrupt in the middle of saving cannot make it wrong."""
        try:
            return torch.load(self.ckpt_path(best=False), map_location="cpu",
                              weights_only=True)["epoch"]
        except Exception:
            return None

    def load_checkpoint(self, best=True, resume=False, path=None):
        """This run's checkpoint (all of it on resume), or the weights at path (--init_from)."""
        own, path = path is None, path or self.ckpt_path(best)
        print("[*] Loading model from {}".format(self.config.ckpt_dir if own else path))
        if not os.path.isfile(path):
            raise UserError(utils.missing_checkpoint(path, self.config) if own
                            else f"--init_from: no checkpoint {path}")
        ckpt = utils.read_checkpoint(path, self.device)
        if own:
            json_path = os.path.join(self.config.ckpt_dir, self.model_name + "_params.json")
            utils.check_params(ckpt, path, json_path, self.config)
        else:
            utils.check_split(ckpt.get("params"), path, self.config)
        try:
            self.model.load_state_dict(ckpt.get("train_state", ckpt["model_state"]) if resume
                                       else ckpt["model_state"])
        except RuntimeError:
            raise UserError(utils.shape_mismatch(path, ckpt["model_state"],
                                                 self.model)) from None
        self.start_epoch = ckpt["epoch"]
        self.best_valid_acc = ckpt["best_valid_acc"]
        if resume:  # everything the next epoch depends on
            decay = (ckpt.get("params") or {}).get("lr_decay", 1)
            if decay != self.config.lr_decay:  # the other schedule's state would not load
                raise UserError(f"{path} was trained with --lr_decay={decay}: resume with it")
            self.optimizer.load_state_dict(ckpt["optim_state"])
            if "scheduler_state" in ckpt:
                self.scheduler.load_state_dict(ckpt["scheduler_state"])
            self.counter = ckpt.get("counter", 0)
            if self.ema:  # a checkpoint without one starts its average from model_state
                self.ema.module.load_state_dict(ckpt["model_state"])
                self.ema.n_averaged.fill_(ckpt.get("ema_steps", 0))
            states = ckpt.get("rng_states") or [ckpt.get("rng_state")]
            if len(states) == self.world and states[0] is not None:
                utils.set_rng_state(states[self.rank])
            elif self.world > 1:  # another number of processes: a stream of its own each
                utils.set_rng_state(states[0])
                torch.manual_seed(self.config.random_seed + 7919 * self.rank + self.start_epoch)
        print("[*] Loaded {} checkpoint @ epoch {} with best valid acc of {:.3f}".format(
            os.path.basename(path), ckpt["epoch"], ckpt["best_valid_acc"]))
        return ckpt


def probabilities(model, x, l_0, T):
    """(Rollout, p): p (B, classes) the class probabilities after T glimpses, averaged over
    M = len(l_0) / B rollouts per image (probabilities, where the seed's test averages
    log-probabilities: a prediction's probability should be one)."""
    out = model(x, l_0, T)
    return out, out.log_probas.exp().view(-1, len(x), out.log_probas.shape[1]).mean(0)


def fmt(values):
    return "x".join(map(str, values)) if all(isinstance(v, int) for v in values) else \
        ", ".join(map(str, values))

