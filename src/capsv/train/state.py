"""The state of a run and its life on disk: :class:`TrainState` owns every stateful object
(network, objective, optimiser, LR schedule, grad scaler, the checkpoint meta) and saves and
restores them together, RNG states included; starting weights (``--initial_model``) and the
rules for continuing a run with changed flags live here too."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .. import faults
from ..errors import CapsvError
from ..models import SpeakerNet
from ..models.checkpoint import (is_capsv, load_state_strict, read_checkpoint, save_checkpoint,
                                 split_reference_state)
from . import distributed, precision
from .checkpoints import (CHECKPOINT_RE, checkpoint_path, curve_path, interrupted_path,
                          latest_checkpoint, remove_interrupted)
from .config import TrainConfig, TrainError
from .losses import Objective
from .rng import rng_state, seed_everything, set_rng_state
from .runlog import RunLog
from .signals import TrainInterrupted, TrainStopped, interrupted
from .step import EpochProgress, current_lr, make_optimizer


def _copy_matching(module: torch.nn.Module, state: dict, source: str, log) -> None:
    """Load the entries of ``state`` whose name and shape fit; warn about the rest."""
    own = module.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(fitting)) + sorted(set(own) - set(state))
    module.load_state_dict({**own, **fitting})
    if skipped:
        log(f"warning: {source}: loss parameters not loaded (absent or of another shape): "
            f"{', '.join(skipped)}")


def load_initial_model(path: str, net: SpeakerNet, objective: Objective, log=print) -> dict:
    """Weights from a capsv checkpoint or a reference state_dict (``global_w`` included)."""
    ckpt = read_checkpoint(path)
    if is_capsv(ckpt):
        if dict(ckpt["model_config"]) != net.config:
            raise TrainError(f"{path}: checkpoint model {ckpt['model_config']} differs from the "
                             f"requested {net.config}; fix --model/--encoder_type/--nOut")
        load_state_strict(net, ckpt["model"], path)
        if ckpt.get("loss"):
            _copy_matching(objective, ckpt["loss"], path, log)
        return ckpt
    model_state, training = split_reference_state(ckpt)
    load_state_strict(net, model_state, path)
    global_w = training.get("global_w")
    if global_w is not None:
        clf = objective.global_clf
        if clf is not None and clf.weight.shape == global_w.shape:
            with torch.no_grad():
                clf.weight.copy_(global_w)
            log(f"loaded the reference global classifier global_w {tuple(global_w.shape)}")
        else:
            wanted = "no --global_clf" if clf is None else f"shape {tuple(clf.weight.shape)}"
            log(f"warning: {path}: global_w {tuple(global_w.shape)} ignored ({wanted} here)")
    return ckpt


@dataclass
class Resumed:
    """Where :meth:`TrainState.resume` found the run."""

    first_epoch: int = 1
    path: str | None = None           # the checkpoint continued from
    meta: dict = field(default_factory=dict)
    previous: str | None = None       # newest epoch checkpoint capsv wrote (pruned when superseded)
    progress: EpochProgress | None = None    # this rank's position in an interrupted epoch


def epoch_plan(cfg: TrainConfig, world_size: int, train_list_sha256: str) -> dict:
    """What decides which batches a process gets in an epoch: a position within an epoch
    only means something to a run where all of it is the same."""
    plan = {"world_size": world_size, "batch_size": cfg.batch_size, "nSpeakers": cfg.nSpeakers,
            "max_seg_per_spk": cfg.max_seg_per_spk, "seed": cfg.seed,
            "train_list_sha256": train_list_sha256}
    if cfg.speed_perturb:      # only when on: plans saved before the flag existed still match
        plan["speed_perturb"] = True
    return plan


# What a resumed run does with a flag that differs from the run's (docs/reliability.md):
# refused: the saved state or the objective would not fit (model, loss, optimiser kind);
RESUME_REFUSED = ("model", "encoder_type", "nOut", "trainfunc", "global_clf", "optimizer",
                  "margin", "scale", "lr_schedule", "speed_perturb")
# kept from the checkpoint, with a warning: the optimiser's and the schedule's saved state
# (the schedule may have lowered the LR since; a new value would break the resume);
RESUME_KEPT = ("lr", "weight_decay", "patience")
# silently applied: where and how the run executes, not what it computes;
RESUME_FREE = ("nDataLoaderThread", "device", "no_progress", "tensorboard", "max_epoch",
               "initial_model", "save_path", "compile", "channels_last", "max_steps", "max_seconds",
               "budget_clock", "eval_every_seconds", "eval_every_steps", "keep_curve_models")
# every other flag: applied from now on, with a warning naming it.


def check_resume_flags(cfg: TrainConfig, then: dict, path: str, log=print) -> None:
    """Refuse or warn about every flag that differs from the checkpoint's ``train_config``."""
    now = asdict(cfg)
    changed = {k: (then[k], now[k]) for k in now if k in then and then[k] != now[k]}
    refused = [f"--{k} {a} -> {b}" for k, (a, b) in changed.items() if k in RESUME_REFUSED]
    if refused:
        raise TrainError(f"{path}: cannot continue this run with {'; '.join(refused)} (the "
                         "saved state belongs to the old value); restore the flag or use "
                         "another --save_path")
    for key, (was, wanted) in changed.items():
        if key in RESUME_KEPT:
            log(f"warning: --{key} {wanted} ignored: continuing the run with its saved "
                f"optimiser and schedule (--{key} was {was}); use another --save_path to "
                "start over with the new value")
        elif key not in RESUME_FREE:
            log(f"warning: --{key} changed since {path} was written ({was} -> {wanted}); "
                "the new value applies from now on")


def _interrupted_checkpoint(save_path: str, epoch: int, plan: dict, log: RunLog):
    """(path, contents) of the loadable interrupted checkpoint of ``epoch``, else None. One of
    an earlier epoch is stale (that epoch's own checkpoint was written) and is not looked at."""
    path = interrupted_path(save_path, epoch)
    if not os.path.exists(path):
        return None
    try:
        ckpt = read_checkpoint(path)
    except CapsvError as exc:
        log.info(f"warning: {exc}; epoch {epoch} restarts from its beginning")
        return None
    then = ckpt.get("position", {}).get("plan", {})
    changed = [f"{k} {then.get(k)} -> {v}" for k, v in plan.items() if then.get(k) != v]
    if changed:
        log.info(f"warning: not continuing {path} mid-epoch: the batches of the epoch differ "
                 f"now ({'; '.join(changed)}), so epoch {epoch} restarts from its beginning")
        return None
    return path, ckpt


@dataclass
class TrainState:
    """Network, objective, optimiser, LR schedule and grad scaler of a run, with ``meta``
    (what the checkpoint says about the run: epoch, threshold and its protocol, budget ...) and
    ``previous``, the newest epoch checkpoint capsv wrote (pruned once superseded; files capsv
    did not write are never deleted). Saves and restores all of them together."""

    cfg: TrainConfig
    net: SpeakerNet
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: precision.Scaler
    meta: dict = field(default_factory=dict)
    previous: str | None = None

    @classmethod
    def build(cls, cfg: TrainConfig, n_speakers: int, device: torch.device) -> "TrainState":
        """Fresh objects for ``cfg``, seeded with ``--seed``."""
        seed_everything(cfg.seed)
        net = SpeakerNet(cfg.model, cfg.encoder_type, cfg.nOut).to(device)
        precision.maybe_channels_last(net, cfg.channels_last)
        objective = Objective(cfg.trainfunc, cfg.nOut, n_speakers, cfg.global_clf,
                              cfg.margin, cfg.scale, cfg.global_clf_weight).to(device)
        objective.check(net.pairwise, cfg.nSpeakers, cfg.encoder_type)
        optimizer, scheduler = make_optimizer(cfg, list(net.parameters()) +
                                              list(objective.parameters()))
        return cls(cfg, net, objective, optimizer, scheduler, precision.Scaler(device, cfg.mixedprec))

    @property
    def lr(self) -> float:
        return current_lr(self.optimizer)

    def train_mode(self) -> None:
        self.net.train()
        self.objective.train()

    # -- restore ---------------------------------------------------------------------------
    def resume(self, plan: dict, dist, device, log) -> Resumed:
        """Continue from save_path: an interrupted epoch's checkpoint if it follows the newest
        loadable epoch checkpoint and has the same ``plan``, else that epoch checkpoint, else
        --initial_model."""
        cfg = self.cfg
        found = latest_checkpoint(cfg.save_path, log=log.info)
        done = found[0] if found else 0
        self.previous = found[1] if found and is_capsv(found[2]) else None
        partial = _interrupted_checkpoint(cfg.save_path, done + 1, plan, log)
        if (partial or found) and cfg.initial_model:
            log.info(f"--initial_model {cfg.initial_model} ignored: continuing the run in {cfg.save_path}")
        if partial is not None:
            path, ckpt = partial
            self.load(path, ckpt, log.info)
            position = ckpt["position"]
            progress = EpochProgress.from_state(position["ranks"][dist.rank], device)
            log.info(f"resumed from {path} (epoch {done + 1}, after step {progress.position} of "
                     f"{position['steps_per_epoch']}, LR {self.lr:g})")
            return self._resumed(done + 1, path, ckpt, progress)
        if found is None:
            if cfg.initial_model:
                load_initial_model(cfg.initial_model, self.net, self.objective, log.info)
                log.info(f"initial weights from {cfg.initial_model}")
            return Resumed(previous=self.previous)
        epoch, path, ckpt = found
        if not is_capsv(ckpt):      # a run of the reference code: weights only
            load_initial_model(path, self.net, self.objective, log.info)
            log.info(f"resuming a reference-format run from {path}: optimiser state starts fresh")
            return Resumed(epoch + 1, path, previous=self.previous)
        self.load(path, ckpt, log.info)
        log.info(f"resumed from {path} (epoch {epoch}, LR {self.lr:g})")
        return self._resumed(epoch + 1, path, ckpt)

    def _resumed(self, first_epoch: int, path: str, ckpt: dict,
                 progress: EpochProgress | None = None) -> Resumed:
        self.meta = dict(ckpt.get("meta", {}))
        return Resumed(first_epoch, path, self.meta, self.previous, progress)

    def load(self, path: str, ckpt: dict, log=print) -> None:
        """Weights, loss parameters, optimiser, scheduler, grad scaler and RNGs of a capsv
        checkpoint, after :func:`check_resume_flags`."""
        cfg, net = self.cfg, self.net
        check_resume_flags(cfg, ckpt.get("train_config", {}), path, log)
        if dict(ckpt["model_config"]) != net.config:
            raise TrainError(f"{cfg.save_path} holds a run of {ckpt['model_config']}, not "
                             f"{net.config}; use another --save_path")
        load_state_strict(net, ckpt["model"], path)
        try:
            self.objective.load_state_dict(ckpt["loss"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            was = {k: ckpt.get("train_config", {}).get(k) for k in ("trainfunc", "global_clf", "optimizer")}
            raise TrainError(
                f"{path}: cannot continue this run with --trainfunc {cfg.trainfunc} --global_clf "
                f"{cfg.global_clf} --optimizer {cfg.optimizer} and this train list (the run used "
                f"{was}; {str(exc).splitlines()[0]}); restore those flags or use another "
                "--save_path") from None
        self.scaler.load_state_dict(ckpt.get("scaler", {}))
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])

    # -- save ------------------------------------------------------------------------------
    def write(self, path: str, what: str, meta: dict | None = None, **extra) -> None:
        """Write a full training checkpoint atomically (with ``meta``, default the run's);
        never one with non-finite weights."""
        bad = [name for name, t in self.net.state_dict().items()
               if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise TrainError(f"{what}: non-finite weights in {', '.join(bad[:5])}; not writing "
                             f"{path}. The last good checkpoint is {self.previous or 'none'}")
        try:
            save_checkpoint(path, self.net, self.meta if meta is None else meta, optimizer=self.optimizer.state_dict(),
                            scheduler=self.scheduler.state_dict(),
                            loss=self.objective.state_dict(), scaler=self.scaler.state_dict(),
                            rng=rng_state(), train_config=asdict(self.cfg), **extra)
        except (OSError, RuntimeError) as exc:    # disk full, file too large, I/O error
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrainError(f"cannot write checkpoint {path} ({detail}); the previous "
                             f"checkpoint {self.previous or '(none)'} is intact. Free disk space "
                             "and rerun the same command to continue") from None

    def save_epoch(self, epoch: int) -> str:
        """Write this epoch's checkpoint; remove the previous one unless its epoch was
        evaluated, and the interrupted checkpoint of this epoch, which it supersedes."""
        cfg, previous = self.cfg, self.previous
        path = checkpoint_path(cfg.save_path, epoch)
        self.write(path, f"epoch {epoch}")
        faults.kill_if("kill_after_save")
        if previous and previous != path and os.path.exists(previous):
            previous_epoch = int(CHECKPOINT_RE.match(os.path.basename(previous)).group(1))
            if previous_epoch % cfg.test_interval != 0:
                os.unlink(previous)
        remove_interrupted(cfg.save_path, epoch)
        self.previous = path
        return path

    def save_curve_model(self, epoch: int, budget: dict, steps: int) -> None:
        """``--keep_curve_models``: the model at a mid-run evaluation point, ``epoch`` in
        progress (its meta says ``epoch - 1`` finished)."""
        self.write(curve_path(self.cfg.save_path, steps), f"step {steps}",
                   {**self.meta, "epoch": epoch - 1, "budget": budget})

    def save_interrupted(self, stopped: TrainStopped, plan: dict, dist, log) -> TrainInterrupted:
        """Rank 0 writes ``interrupted%09d.model``: the full training state plus every rank's
        position and running totals in the epoch; all ranks wait for it. Returns the exception
        to raise, whose message names the file."""
        progress = stopped.progress
        ranks = distributed.gather(progress.to_state(), dist)
        path = interrupted_path(self.cfg.save_path, progress.epoch)
        if dist.is_main:
            position = {"epoch": progress.epoch, "world_size": dist.world_size, "plan": plan,
                        "steps_per_epoch": stopped.total, "ranks": ranks}
            self.write(path, f"epoch {progress.epoch} step {progress.position}", position=position)
        distributed.barrier(dist)
        return interrupted(stopped.signum, f"at epoch {progress.epoch}, step {progress.position} "
                           f"of {stopped.total}: saved {path}; run the same command again to "
                           "continue from there", path, log)
