"""One optimiser step and one epoch of them (spec §4), with the running totals an
interrupted epoch saves (:class:`EpochProgress`)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .. import faults
from ..workers import stop_workers, worker_error
from . import distributed, precision
from .config import TrainConfig, TrainError
from .forward import forward_batch
from .losses import LossOutput
from .rng import rng_state, set_rng_state
from .schedule import make_schedule
from .signals import StopSignals, TrainStopped


@dataclass
class EpochStats:
    epoch: int
    loss: float
    acc: float
    lr: float
    steps: int
    crops: int
    seconds: float
    parts: dict

    @property
    def samples_per_s(self) -> float:
        return self.crops / self.seconds if self.seconds > 0 else 0.0


@dataclass
class EpochProgress:
    """How far this process got into an epoch: the running totals of
    :func:`train_one_epoch`. An interrupted run saves them (:meth:`to_state`), so that the
    rerun continues mid-epoch and ends bit-identical to a run that was never stopped."""

    epoch: int
    position: int = 0               # batches of this rank's share consumed (trained or skipped)
    steps: int = 0                  # optimiser steps taken
    skipped: int = 0                # batches skipped for a non-finite loss
    crops: int = 0
    seconds: float = 0.0
    loss_sum: torch.Tensor | None = None   # tensors, as summed: a float would round them
    acc_sum: torch.Tensor | None = None
    part_sums: dict = field(default_factory=dict)
    rng: dict | None = None         # the global RNG states where it stopped

    @classmethod
    def begin(cls, epoch: int, device) -> "EpochProgress":
        return cls(epoch, loss_sum=torch.zeros((), device=device),
                   acc_sum=torch.zeros((), device=device))

    def add(self, out: LossOutput, crops: int) -> None:
        self.loss_sum += out.loss.detach()
        for name, value in out.parts.items():
            self.part_sums[name] = self.part_sums.get(name, 0.0) + value.detach()
        self.acc_sum += out.top1
        self.steps += 1
        self.crops += crops

    def to_state(self) -> dict:
        """Tensors on the CPU and plain numbers: loadable with ``weights_only=True``."""
        cpu = lambda t: torch.as_tensor(t).detach().cpu()      # noqa: E731
        return {"epoch": self.epoch, "position": self.position, "steps": self.steps,
                "skipped": self.skipped, "crops": self.crops, "seconds": self.seconds,
                "loss_sum": cpu(self.loss_sum), "acc_sum": cpu(self.acc_sum),
                "part_sums": {k: cpu(v) for k, v in self.part_sums.items()}, "rng": self.rng}

    @classmethod
    def from_state(cls, state: dict, device) -> "EpochProgress":
        return cls(int(state["epoch"]), int(state["position"]), int(state["steps"]),
                   int(state["skipped"]), int(state["crops"]), float(state["seconds"]),
                   state["loss_sum"].to(device), state["acc_sum"].to(device),
                   {k: v.to(device) for k, v in state["part_sums"].items()}, state["rng"])

    def stats(self, lr: float) -> EpochStats:
        if self.steps == 0:
            raise TrainError(f"epoch {self.epoch} produced no usable batch; see the lines above")
        loss = self.loss_sum.item() / self.steps
        if not math.isfinite(loss):
            raise TrainError(f"epoch {self.epoch}: the loss is {loss}; training diverged, "
                             "lower --lr")
        parts = {k: float(v) / self.steps for k, v in self.part_sums.items()}
        if self.skipped:
            parts["skipped_steps"] = self.skipped
        return EpochStats(self.epoch, loss, self.acc_sum.item() / self.steps, lr, self.steps,
                          self.crops, self.seconds, parts)


def make_optimizer(cfg: TrainConfig, params):
    params = list(params)
    if cfg.optimizer == "sgd":
        wd = 1e-4 if cfg.weight_decay is None else cfg.weight_decay
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=wd, nesterov=True)
    else:
        wd = 0.0 if cfg.weight_decay is None else cfg.weight_decay
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd)
    scheduler = make_schedule(cfg.lr_schedule, optimizer, base_lr=cfg.lr,
                              patience=cfg.default_patience, warmup=cfg.warmup,
                              final_lr=cfg.final_lr)
    return optimizer, scheduler


def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _check_bad_step(cfg: TrainConfig, epoch: int, step: int, loss, skipped: int) -> None:
    """A step whose loss is NaN/inf is skipped (weights untouched); past --max_bad_steps
    of them in one epoch, training stops."""
    if skipped > cfg.max_bad_steps:
        raise TrainError(f"epoch {epoch} step {step}: the loss is {loss.item()} (non-finite; "
                         f"{skipped} such step(s) this epoch, --max_bad_steps {cfg.max_bad_steps}); "
                         "training diverged: lower --lr, check the data, or raise --max_bad_steps. "
                         "No checkpoint was written for this epoch")
    print(f"warning: epoch {epoch} step {step}: the loss is {loss.item()}; step skipped "
          f"({skipped} of at most {cfg.max_bad_steps} this epoch)", flush=True)


def _train_step(net, objective, optimizer, waves, labels, cfg: TrainConfig, device, step,
                scaler) -> tuple[LossOutput, bool]:
    """Forward, backward and optimiser step of one batch; (output, whether it was applied).
    A NaN/inf loss is never applied: the weights stay untouched."""
    waves = waves.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    with precision.autocast(device, cfg.mixedprec):
        out = (forward_batch(net, objective, waves, labels, cfg.batch_size, cfg.per_group_bn)
               if step is None else distributed.as_loss_output(step(waves, labels)))
    optimizer.zero_grad(set_to_none=True)
    if faults.armed("nan_loss"):
        out.loss = out.loss * float("nan")
    if not torch.isfinite(out.loss):
        return out, False
    scaler.backward(out.loss)
    scaler.step(optimizer)
    return out, True


def train_one_epoch(net, objective, optimizer, loader, cfg: TrainConfig, epoch: int,
                    device: torch.device, progress: bool, step=None, scaler=None,
                    resume: EpochProgress | None = None, stop: StopSignals | None = None,
                    dist=distributed.Dist(), after_step=None) -> EpochStats:
    """One pass over this process's batches. ``step``: the (DDP-wrapped) module of
    :func:`capsv.train.distributed.wrap`; ``scaler``: a :class:`capsv.train.precision.Scaler`.

    ``resume``: the progress of an interrupted pass of this epoch (the loader's sampler
    already skips the batches it covered). ``stop``: polled after every batch; once a signal
    came, :class:`TrainStopped` carries the progress out instead of a finished epoch.
    ``after_step(position, total)``: called after every applied step; when it returns True
    (the training budget is spent) the epoch ends there."""
    scaler = scaler or precision.Scaler(device, False)
    net.train()
    objective.train()
    lr = current_lr(optimizer)
    done = resume or EpochProgress.begin(epoch, device)
    total = done.position + len(loader)
    started = last_shown = time.time()
    bar = tqdm(total=total, initial=done.position, desc=f"epoch {epoch}", unit="step",
               disable=not progress, dynamic_ncols=True)
    batches = iter(loader)
    if resume is not None and resume.rng is not None:
        # Creating the iterator drew a seed from the global RNG, as it did in the run that
        # was stopped; from here on every RNG continues from where that run left off.
        set_rng_state(resume.rng)
    try:
        for waves, labels, bad in batches:
            if bad:                          # found in whichever process read the batch
                loader.dataset.note_bad(bad)
            out, applied = _train_step(net, objective, optimizer, waves, labels, cfg, device,
                                       step, scaler)
            if applied:
                faults.kill_if("kill_after_step")
                done.add(out, waves.shape[0])
            else:
                done.skipped += 1
                _check_bad_step(cfg, epoch, done.position + 1, out.loss, done.skipped)
            done.position += 1
            bar.update(1)
            if applied:
                faults.pause_if("pause_after_step",
                                lambda: stop is None or stop.signum is not None)
            if done.steps and (time.time() - last_shown > 1.0 or done.position == total):
                last_shown = time.time()
                _show_progress(bar, done, epoch, last_shown - started)
            signum = stop.poll(dist, device) if stop is not None else 0
            if signum:
                done.seconds += time.time() - started
                done.rng = rng_state()
                raise TrainStopped(done, total, signum)
            if applied and after_step is not None and after_step(done.position, total):
                break
    except TrainStopped:
        raise
    except Exception as exc:           # a worker's error comes with its traceback: one line
        raise worker_error(exc) from None
    finally:
        stop_workers(batches)          # now: a worker left running would hang the exit
        bar.close()
    done.seconds += time.time() - started
    return done.stats(lr)


def _show_progress(bar, done: EpochProgress, epoch: int, seconds: float) -> None:
    mean_loss = done.loss_sum.item() / done.steps
    if not math.isfinite(mean_loss):
        raise TrainError(f"epoch {epoch} step {done.position}: the loss is {mean_loss}; "
                         "training diverged, lower --lr")
    bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{done.acc_sum.item() / done.steps:.2f}%",
                    crops_per_s=f"{done.crops / max(seconds, 1e-9):.1f}")
