"""Training: the paper's recipe (spec §4) in one obvious loop, resumable.

    summary = capsv.train.train({"train_list": ..., "train_path": ..., "save_path": ...})

What one epoch does: the sampler deals batches of ``batch_size`` speakers x ``nSpeakers``
utterances; each step runs the backbone on all crops, pools them (TAP/SAP per crop, CAP per
(query, support) pair), computes ``--trainfunc`` (+ ``--global_clf``) and takes an optimiser
step. After the epoch the LR scheduler sees the epoch's mean loss; every ``test_interval``
epochs (and at ``max_epoch``) the model is evaluated on ``--test_list``.

Files under ``save_path``:
- ``model/model%09d.model``: a capsv checkpoint after every epoch (weights, config, optimiser,
  scheduler, loss parameters, RNG states, ``meta``). The one of the previous epoch is removed
  when a newer one is written unless its epoch is a multiple of ``test_interval``, so the
  evaluated epochs and the newest one stay.
- ``model/interrupted%09d.model``: written when SIGINT/SIGTERM stops a run mid-epoch (after the
  optimiser step in progress): the same state plus the position in that epoch and its running
  sums (:class:`EpochProgress`). Removed once that epoch's own checkpoint is written.
- ``result/scores.txt``: human-readable log (the reference's format); ``result/metrics.jsonl``:
  one JSON object per epoch.
Every write is atomic (temp file + rename). A run restarts from the newest loadable
checkpoint in ``save_path``: mid-epoch after a signal (ending bit-identical to a run never
stopped); a killed run (SIGKILL) loses at most the epoch in progress.
Under ``torchrun`` the same loop runs on every rank with DDP (see :mod:`capsv.distributed`);
``--mixedprec``/``--compile``: :mod:`capsv.precision`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import signal
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from tqdm import tqdm

from . import allocator, audio, distributed, faults, precision
from .budget import CLOCKS, EvalTimer, TrainBudget
from .models.checkpoint import (is_capsv, load_state_strict, read_checkpoint, save_checkpoint,
                         split_reference_state)
from .data.dataset import TrainCrops, TrainList, build_augmenter, make_train_loader
from .data.lists import read_trials
from .data.sampler import SpeakerBatchSampler
from .errors import CapsvError
from .evaluation.pipeline import evaluate_list, validate_inputs, warn_if_crops_are_mostly_padding
from .evaluation.sharded import sharded_extractor
from .losses import LOSSES, Embeddings, LossOutput, Objective
from .models import BACKBONES, SpeakerNet
from .models.pooling import POOLINGS
from .schedule import SCHEDULES, make_schedule
from .eval_policy import EVAL_SHORT, choose_eval_frames
from .utils import atomic_write_text, ensure_writable_dir, resolve_device
from .protocol import EVAL_FRAMES, META_KEY as PROTOCOL_KEY, EvalProtocol
from .runlock import run_lock
from .workers import stop_workers, worker_error

CHECKPOINT_RE = re.compile(r"^model(\d{9})\.model$")
INTERRUPTED_RE = re.compile(r"^interrupted(\d{9})\.model$")


class TrainError(CapsvError):
    """A training run that cannot start or continue; the message says why."""


class TrainInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT (Ctrl-C) or SIGTERM. ``checkpoint``: the file the same
    command continues from (None if there is none yet); ``signum``: the signal. A
    KeyboardInterrupt, so code that handles Ctrl-C keeps working; ``str()`` is the message."""

    def __init__(self, message: str, checkpoint: str | None, signum: int):
        super().__init__(message)
        self.checkpoint, self.signum = checkpoint, int(signum)

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by a signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    def __str__(self) -> str:
        return str(self.args[0])


class StopNow(KeyboardInterrupt):
    """A second stop signal: leave at once, whatever is in progress."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM while training (a context manager). The first signal is only
    recorded, so the loop can finish the optimiser step in progress and save exactly where it
    is (a handler that raised could leave the weights half-updated). A second one raises
    :class:`StopNow` at once; the checkpoints on disk are intact then too (atomic writes)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:          # not the main thread: signals stay the caller's business
            pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise StopNow(signum)
        self.signum = signum
        # os.write, not print: print may be in progress in the frame this handler interrupted.
        os.write(1, f"{signal.Signals(signum).name} received: stopping after the current "
                    "training step (or after the evaluation and checkpoint in progress) with a "
                    "checkpoint; send it again to stop at once\n".encode())

    def poll(self, dist, device) -> int:
        """The signal this process (under DDP: any rank) received, else 0. Under DDP every rank
        must call it at the same points, so that all of them stop after the same step."""
        return distributed.max_int(self.signum or 0, dist, device)


class TrainStopped(Exception):
    """Raised by :func:`train_one_epoch` after the step during which a stop signal came."""

    def __init__(self, progress: "EpochProgress", total: int, signum: int):
        super().__init__(f"stopped at step {progress.position} of {total}")
        self.progress, self.total, self.signum = progress, total, signum


@dataclass
class TrainConfig:
    """Every training option; the CLI flags of ``capsv train`` have these names and defaults."""

    # model
    model: str = "ResNetSE34L"
    encoder_type: str = "CAP"
    nOut: int = 512
    # objective
    trainfunc: str = "proto"
    nSpeakers: int = 3
    global_clf: bool = False
    global_clf_weight: float = 1.0        # weight of the global classifier's loss term
    margin: float = 0.1
    scale: float = 30.0
    # data
    train_list: str = "./data/train_list.txt"
    train_path: str = "./data/voxceleb2"
    max_frames: int = 200
    batch_size: int = 200
    max_seg_per_spk: int = 100
    nDataLoaderThread: int = 5
    augment: bool = False
    musan_path: str = ""
    rir_path: str = ""
    seed: int = 0
    max_bad_steps: int = 0            # steps with a non-finite loss skipped before stopping
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float | None = None     # None: 1e-4 for sgd, 0 for adam (the reference)
    patience: int | None = None           # None: 6 for sgd, 3 for adam (the reference)
    lr_decay: float = 0.95                # accepted for compatibility; unused, as in the reference
    lr_schedule: str = "plateau"          # the paper's; or cosine (see capsv.schedule)
    warmup: float = 0.05                  # cosine: share of the run spent warming up
    final_lr: float = 0.01                # cosine: last LR as a share of --lr
    max_epoch: int = 500
    max_steps: int = 0                    # 0: no limit (capsv.budget)
    max_seconds: float = 0.0              # 0: no limit; training time only (capsv.budget)
    budget_clock: str = "wall"            # or cpu: process CPU time (capsv.budget)
    test_interval: int = 5
    eval_every_seconds: float = 0.0       # also evaluate mid-run this often (budget clock)
    eval_every_steps: int = 0             # ... or every this many optimiser steps
    per_group_bn: bool = False
    # evaluation
    test_list: str | None = None
    test_path: str = "./data/voxceleb1"
    eval_frames: int = EVAL_FRAMES
    num_eval: int = 10
    eval_short: str = "auto"              # or pad: see capsv.eval_policy
    on_bad_audio: str = "error"           # or "skip": see --on_bad_audio
    strict_audio: bool = False            # refuse audio that is not 16 kHz (else resampled)
    # files and runtime
    save_path: str = "./data/exp1"
    initial_model: str = ""
    device: str = "auto"
    mixedprec: bool = False
    compile: bool = False
    no_progress: bool = False
    tensorboard: bool = False

    # keys that a CLI namespace carries but training does not use
    IGNORED = ("config", "command", "eval")

    @classmethod
    def from_any(cls, args) -> "TrainConfig":
        """From an ``argparse.Namespace``, a dict or a TrainConfig; unknown keys are an error."""
        if isinstance(args, cls):
            return dataclasses.replace(args)
        values = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
        if "nSpeaker" in values:                 # the seed README's spelling
            values.setdefault("nSpeakers", values.pop("nSpeaker"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in values if k not in known and k not in cls.IGNORED)
        if unknown:
            raise TrainError(f"unknown training option(s): {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(known))}")
        config = cls(**{k: v for k, v in values.items() if k in known})
        config.validate()
        return config

    def validate(self) -> None:
        for value, registry, flag in ((self.model, BACKBONES, "--model"),
                                      (self.encoder_type, POOLINGS, "--encoder_type"),
                                      (self.trainfunc, LOSSES, "--trainfunc")):
            if value not in registry:
                raise TrainError(f"unknown {flag} '{value}'; choose one of: "
                                 f"{', '.join(registry.names())}")
        for value, registry, flag in ((self.lr_schedule, SCHEDULES, "--lr_schedule"),
                                      (self.budget_clock, CLOCKS, "--budget_clock"),
                                      (self.eval_short, EVAL_SHORT, "--eval_short")):
            if value not in registry:
                raise TrainError(f"unknown {flag} '{value}'; choose one of: "
                                 f"{', '.join(sorted(registry))}")
        for name in ("max_steps", "max_seconds", "eval_every_seconds", "eval_every_steps",
                     "global_clf_weight"):
            if getattr(self, name) < 0:
                raise TrainError(f"--{name} must be 0 or more, got {getattr(self, name)}")
        if not (0 <= self.warmup < 1 and 0 <= self.final_lr <= 1):
            raise TrainError(f"--warmup must be in [0, 1) and --final_lr in [0, 1], got "
                             f"{self.warmup} and {self.final_lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise TrainError(f"unknown --optimizer '{self.optimizer}'; choose sgd or adam")
        for name in ("max_frames", "batch_size", "nSpeakers", "max_epoch", "test_interval",
                     "nOut", "max_seg_per_spk", "num_eval"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.on_bad_audio not in ("error", "skip"):
            raise TrainError(f"--on_bad_audio must be error or skip, got {self.on_bad_audio!r}")
        if self.eval_frames < 0:
            raise TrainError(f"--eval_frames must be 0 (whole utterance) or more, got {self.eval_frames}")
        if self.max_bad_steps < 0:
            raise TrainError(f"--max_bad_steps must be 0 or more, got {self.max_bad_steps}")
        if self.nDataLoaderThread < 0:
            raise TrainError("--nDataLoaderThread must be 0 (load in the main process) or more")
        if not self.lr > 0:
            raise TrainError(f"--lr must be positive, got {self.lr}")

    @property
    def default_patience(self) -> int:
        return self.patience if self.patience is not None else (6 if self.optimizer == "sgd" else 3)


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


@dataclass
class TrainSummary:
    """What :func:`train` returns. ``samples_per_s`` counts training crops per second."""

    save_path: str
    first_epoch: int
    final_epoch: int
    epochs_run: int
    loss: float | None
    acc: float | None
    lr: float
    metrics: dict | None          # the last evaluation's (EER, minDCF, threshold), if any
    wall_time_s: float
    samples_per_s: float
    checkpoint: str | None
    resumed_from: str | None
    skipped_files: list = field(default_factory=list)   # bad audio left out (--on_bad_audio skip)
    budget: dict = field(default_factory=dict)   # training seconds and steps spent, all runs

    @property
    def eer(self) -> float | None:
        return None if self.metrics is None else self.metrics["EER"]


# --------------------------------------------------------------------------- one step
def forward_batch(net: SpeakerNet, objective: Objective, waves: torch.Tensor,
                  labels: torch.Tensor, batch_size: int, per_group_bn: bool = False) -> LossOutput:
    """Loss of one batch. ``waves`` (M*B, samples) and ``labels`` (M*B,) are utterance-major.

    ``per_group_bn=False``: one backbone call over all M*B crops (BatchNorm statistics over
    the whole batch; fastest). ``True``: one call for the supports and one per query group,
    as the reference does, so each group has its own BatchNorm statistics (exact parity).
    """
    if per_group_bn:
        frames = torch.cat([net.frames(group) for group in waves.split(batch_size)])
    else:
        frames = net.frames(waves)
    if net.pairwise:
        e_s, e_q = net.pooling(frames[:batch_size], frames[batch_size:])
        emb = Embeddings(batch_size, e_s=e_s, e_q=e_q)
    else:
        emb = Embeddings(batch_size, emb=net.pooling(frames))
    return objective(emb, labels[:batch_size])


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


# --------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors/ints/lists (``weights_only``-loadable)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": list(mt), "gauss": gauss},
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- checkpoints
def checkpoint_path(save_path: str, epoch: int) -> str:
    return os.path.join(save_path, "model", "model%09d.model" % epoch)


def interrupted_path(save_path: str, epoch: int) -> str:
    """Where a run stopped by a signal during ``epoch`` saves its mid-epoch state."""
    return os.path.join(save_path, "model", "interrupted%09d.model" % epoch)


def list_checkpoints(save_path: str) -> list[tuple[int, str]]:
    """(epoch, path) of every ``model%09d.model`` in ``save_path/model``, newest first."""
    folder = os.path.join(save_path, "model")
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, name))
             for name in os.listdir(folder) if (m := CHECKPOINT_RE.match(name))]
    return sorted(found, reverse=True)


def latest_checkpoint(save_path: str, log=print) -> tuple[int, str, dict] | None:
    """The newest checkpoint that loads, as (epoch, path, contents); broken ones are skipped."""
    for epoch, path in list_checkpoints(save_path):
        try:
            return epoch, path, read_checkpoint(path)
        except CapsvError as exc:
            log(f"warning: skipping unreadable checkpoint: {exc}")
    return None


def _remove_stale_temp_files(folder: str) -> None:
    """Temp files of atomic writes interrupted by a kill (``.<name>.<random>.tmp``)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(".tmp"):
            os.unlink(os.path.join(folder, name))


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


# --------------------------------------------------------------------------- logs
def _append_atomic(path: str, text: str) -> None:
    old = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
    atomic_write_text(path, old + text)


def _truncate_metrics(path: str, last_epoch: int) -> None:
    """Drop metrics of epochs after the checkpoint a run resumes from (they will be redone)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        rows = [line for line in f if line.strip()]
    kept = [line for line in rows if json.loads(line).get("epoch", 0) <= last_epoch]
    if len(kept) != len(rows):
        atomic_write_text(path, "".join(kept))


class RunLog:
    """stdout + ``result/scores.txt`` + ``result/metrics.jsonl`` (+ TensorBoard if asked)."""

    def __init__(self, save_path: str, tensorboard: bool):
        self.result_dir = os.path.join(save_path, "result")
        os.makedirs(self.result_dir, exist_ok=True)
        _remove_stale_temp_files(self.result_dir)
        self.scores = os.path.join(self.result_dir, "scores.txt")
        self.metrics = os.path.join(self.result_dir, "metrics.jsonl")
        self.curve = os.path.join(self.result_dir, "curve.jsonl")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(save_path, "tensorboard"))
            except ImportError:
                self.info("warning: --tensorboard needs the tensorboard package; not logging to it")

    def info(self, message: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)

    def header(self, cfg: TrainConfig, note: str) -> None:
        lines = [f"# capsv train {time.strftime('%Y-%m-%d %H:%M:%S')} {note}"]
        lines += [f"{k} {v}" for k, v in asdict(cfg).items()]
        _append_atomic(self.scores, "\n".join(lines) + "\n")

    def epoch(self, stats: EpochStats, metrics: dict | None) -> None:
        line = (f"IT {stats.epoch}, LR {stats.lr:f}, TEER/T1 {stats.acc:2.2f}, "
                f"TLOSS {stats.loss:f}")
        row = {"epoch": stats.epoch, "loss": stats.loss, "acc": stats.acc, "lr": stats.lr,
               "samples_per_s": stats.samples_per_s, "seconds": stats.seconds,
               "steps": stats.steps, **stats.parts}
        if metrics:
            line += f", VEER {metrics['EER']:2.4f}, MinDCF {metrics['minDCF_p0.05']:.5f}"
            row.update(metrics)
        _append_atomic(self.scores, line + "\n")
        _append_atomic(self.metrics, json.dumps(row) + "\n")
        self.info(line)
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, stats.epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------- the loop
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
    :func:`capsv.distributed.wrap`; ``scaler``: a :class:`capsv.precision.Scaler`.

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


def _prepare_evaluation(cfg: TrainConfig, log: RunLog) -> int | None:
    """Check the trial list and its audio now, so a bad test set fails before training.
    Returns the eval_frames to evaluate with (``--eval_short``), None without a test list."""
    if not cfg.test_list:
        log.info("no --test_list: training without evaluation")
        return None
    lengths: dict[str, int] = {}
    validate_inputs(read_trials(cfg.test_list), cfg.test_path, cfg.test_list, cfg.on_bad_audio,
                    lengths=lengths)
    frames, note = choose_eval_frames(lengths.values(), cfg.eval_frames, cfg.eval_short)
    if note:
        log.info(f"note: {note}")
    else:
        warn_if_crops_are_mostly_padding(lengths, cfg.eval_frames, cfg.test_list)
    return frames


@dataclass
class Resumed:
    """Where :func:`_resume` found the run."""

    first_epoch: int = 1
    path: str | None = None           # the checkpoint continued from
    meta: dict = field(default_factory=dict)
    previous: str | None = None       # newest epoch checkpoint capsv wrote (pruned when superseded)
    progress: EpochProgress | None = None    # this rank's position in an interrupted epoch


def epoch_plan(cfg: TrainConfig, world_size: int, train_list_sha256: str) -> dict:
    """What decides which batches a process gets in an epoch: a position within an epoch
    only means something to a run where all of it is the same."""
    return {"world_size": world_size, "batch_size": cfg.batch_size, "nSpeakers": cfg.nSpeakers,
            "max_seg_per_spk": cfg.max_seg_per_spk, "seed": cfg.seed,
            "train_list_sha256": train_list_sha256}


def _resume(cfg, net, objective, optimizer, scheduler, scaler, plan: dict, dist, device,
            log: RunLog) -> Resumed:
    """Continue from save_path: an interrupted epoch's checkpoint if it follows the newest
    loadable epoch checkpoint and has the same ``plan``, else that epoch checkpoint, else
    --initial_model."""
    found = latest_checkpoint(cfg.save_path, log=log.info)
    done = found[0] if found else 0
    previous = found[1] if found and is_capsv(found[2]) else None
    partial = _interrupted_checkpoint(cfg.save_path, done + 1, plan, log)
    if (partial or found) and cfg.initial_model:
        log.info(f"--initial_model {cfg.initial_model} ignored: continuing the run in {cfg.save_path}")
    if partial is not None:
        path, ckpt = partial
        _load_training_state(cfg, net, objective, optimizer, scheduler, scaler, path, ckpt,
                             log.info)
        position = ckpt["position"]
        progress = EpochProgress.from_state(position["ranks"][dist.rank], device)
        log.info(f"resumed from {path} (epoch {done + 1}, after step {progress.position} of "
                 f"{position['steps_per_epoch']}, LR {current_lr(optimizer):g})")
        return Resumed(done + 1, path, dict(ckpt.get("meta", {})), previous, progress)
    if found is None:
        if cfg.initial_model:
            load_initial_model(cfg.initial_model, net, objective, log.info)
            log.info(f"initial weights from {cfg.initial_model}")
        return Resumed()
    epoch, path, ckpt = found
    if not is_capsv(ckpt):      # a run of the reference code: weights only
        load_initial_model(path, net, objective, log.info)
        log.info(f"resuming a reference-format run from {path}: optimiser state starts fresh")
        return Resumed(epoch + 1, path)
    _load_training_state(cfg, net, objective, optimizer, scheduler, scaler, path, ckpt,
                         log.info)
    log.info(f"resumed from {path} (epoch {epoch}, LR {current_lr(optimizer):g})")
    return Resumed(epoch + 1, path, dict(ckpt.get("meta", {})), previous)


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


# What a resumed run does with a flag that differs from the run's (docs/reliability.md):
# refused: the saved state or the objective would not fit (model, loss, optimiser kind);
RESUME_REFUSED = ("model", "encoder_type", "nOut", "trainfunc", "global_clf", "optimizer",
                  "margin", "scale", "lr_schedule")
# kept from the checkpoint, with a warning: the optimiser's and the schedule's saved state
# (the schedule may have lowered the LR since; a new value would break the resume);
RESUME_KEPT = ("lr", "weight_decay", "patience")
# silently applied: where and how the run executes, not what it computes;
RESUME_FREE = ("nDataLoaderThread", "device", "no_progress", "tensorboard", "max_epoch",
               "initial_model", "save_path", "compile", "max_steps", "max_seconds",
               "budget_clock", "eval_every_seconds", "eval_every_steps")
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


def _load_training_state(cfg, net, objective, optimizer, scheduler, scaler, path: str,
                         ckpt: dict, log=print) -> None:
    """Weights, loss parameters, optimiser, scheduler, grad scaler and RNGs of a capsv
    checkpoint, after :func:`check_resume_flags`."""
    check_resume_flags(cfg, ckpt.get("train_config", {}), path, log)
    if dict(ckpt["model_config"]) != net.config:
        raise TrainError(f"{cfg.save_path} holds a run of {ckpt['model_config']}, not "
                         f"{net.config}; use another --save_path")
    load_state_strict(net, ckpt["model"], path)
    try:
        objective.load_state_dict(ckpt["loss"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        was = {k: ckpt.get("train_config", {}).get(k) for k in ("trainfunc", "global_clf", "optimizer")}
        raise TrainError(
            f"{path}: cannot continue this run with --trainfunc {cfg.trainfunc} --global_clf "
            f"{cfg.global_clf} --optimizer {cfg.optimizer} and this train list (the run used "
            f"{was}; {str(exc).splitlines()[0]}); restore those flags or use another "
            "--save_path") from None
    scaler.load_state_dict(ckpt.get("scaler", {}))
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])


def _describe_run(log: RunLog, cfg: TrainConfig, train_list: TrainList, sampler, device,
                  first_epoch: int) -> None:
    substituted = (f" ({train_list.substituted_m4a} .wav read as .m4a)"
                   if train_list.substituted_m4a else "")
    log.info(f"{len(train_list.paths)} utterances of {train_list.n_speakers} speakers from "
             f"{cfg.train_list}{substituted}")
    log.info(sampler.describe(first_epoch))
    if cfg.per_group_bn:
        mode = (f"backbone per group (the supports, then each of {cfg.nSpeakers - 1} query groups "
                f"of {cfg.batch_size}): the reference's BatchNorm statistics")
    else:
        mode = (f"backbone: one forward over all {cfg.nSpeakers * cfg.batch_size} crops "
                "(joint BatchNorm statistics)")
    log.info(f"{cfg.model} + {cfg.encoder_type}, --trainfunc {cfg.trainfunc}"
             f"{' + global classifier' if cfg.global_clf else ''}, {cfg.optimizer} on {device}; "
             f"{mode}")


def _evaluate(cfg: TrainConfig, net: SpeakerNet, device, progress: bool, log: RunLog,
              dist=distributed.Dist(), eval_frames: int | None = None) -> dict:
    eval_frames = cfg.eval_frames if eval_frames is None else eval_frames
    log.info(f"evaluating on {cfg.test_list}")
    # One pipeline for one process and for torchrun; only the extraction is split over ranks.
    extract = sharded_extractor(dist) if dist.enabled else None
    distributed.share_main_buffers(net, dist)      # every rank extracts with rank 0's model
    result = evaluate_list(net, cfg.test_list, cfg.test_path, eval_frames, cfg.num_eval,
                           device=device, workers=cfg.nDataLoaderThread,
                           progress=progress and dist.is_main, on_bad_audio=cfg.on_bad_audio,
                           extract=extract)
    allocator.keep_freed_memory()       # evaluate_list returned freed blocks; steps reuse them
    # Plain Python numbers: numpy scalars would break weights_only loading of the checkpoint.
    metrics = {k: getattr(v, "item", lambda v=v: v)() for k, v in result.metrics.as_dict().items()}
    return distributed.from_main(metrics, dist)     # every rank records rank 0's numbers


def _log_curve(log: RunLog, budget: TrainBudget, epoch: int, metrics: dict, eval_frames: int,
               num_eval: int) -> None:
    """One row of ``result/curve.jsonl``: EER and minDCF against training time and steps."""
    row = {"epoch": epoch, "steps": budget.steps, "train_seconds": round(budget.seconds, 3),
           "clock": budget.clock, "eval_frames": eval_frames, "num_eval": num_eval, **metrics}
    _append_atomic(log.curve, json.dumps(row) + "\n")


def _write_checkpoint(path: str, what: str, cfg: TrainConfig, net, objective, optimizer,
                      scheduler, scaler, meta: dict, previous: str | None, **extra) -> None:
    """Write a full training checkpoint atomically; never one with non-finite weights."""
    bad = [name for name, t in net.state_dict().items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise TrainError(f"{what}: non-finite weights in {', '.join(bad[:5])}; not writing "
                         f"{path}. The last good checkpoint is {previous or 'none'}")
    try:
        save_checkpoint(path, net, meta, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), loss=objective.state_dict(),
                        scaler=scaler.state_dict(), rng=rng_state(), train_config=asdict(cfg),
                        **extra)
    except (OSError, RuntimeError) as exc:    # disk full, file too large, I/O error
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainError(f"cannot write checkpoint {path} ({detail}); the previous checkpoint "
                         f"{previous or '(none)'} is intact. Free disk space and rerun the same "
                         "command to continue") from None


def _save_epoch(cfg: TrainConfig, epoch: int, net, objective, optimizer, scheduler, scaler,
                meta: dict, previous: str | None) -> str:
    """Write this epoch's checkpoint; remove ``previous`` unless its epoch was evaluated,
    and the interrupted checkpoint of this epoch, which it supersedes."""
    path = checkpoint_path(cfg.save_path, epoch)
    _write_checkpoint(path, f"epoch {epoch}", cfg, net, objective, optimizer, scheduler, scaler,
                      meta, previous)
    faults.kill_if("kill_after_save")
    if previous and previous != path and os.path.exists(previous):
        previous_epoch = int(CHECKPOINT_RE.match(os.path.basename(previous)).group(1))
        if previous_epoch % cfg.test_interval != 0:
            os.unlink(previous)
    _remove_interrupted(cfg.save_path, epoch)
    return path


def _remove_interrupted(save_path: str, up_to_epoch: int) -> None:
    folder = os.path.join(save_path, "model")
    for name in os.listdir(folder):
        m = INTERRUPTED_RE.match(name)
        if m and int(m.group(1)) <= up_to_epoch:
            os.unlink(os.path.join(folder, name))


def _save_interrupted(cfg: TrainConfig, stopped: TrainStopped, net, objective, optimizer,
                      scheduler, scaler, meta: dict, previous: str | None, plan: dict, dist,
                      log) -> TrainInterrupted:
    """Rank 0 writes ``interrupted%09d.model``: the full training state plus every rank's
    position and running totals in the epoch; all ranks wait for it. Returns the exception
    to raise, whose message names the file."""
    progress = stopped.progress
    ranks = distributed.gather(progress.to_state(), dist)
    path = interrupted_path(cfg.save_path, progress.epoch)
    if dist.is_main:
        position = {"epoch": progress.epoch, "world_size": dist.world_size, "plan": plan,
                    "steps_per_epoch": stopped.total, "ranks": ranks}
        _write_checkpoint(path, f"epoch {progress.epoch} step {progress.position}", cfg, net,
                          objective, optimizer, scheduler, scaler, meta, previous,
                          position=position)
    distributed.barrier(dist)
    return _interrupted(stopped.signum, f"at epoch {progress.epoch}, step {progress.position} of "
                        f"{stopped.total}: saved {path}; run the same command again to continue "
                        "from there", path, log)


def _stopped_at_once(signum: int, epoch: int, ckpt: str | None, log) -> TrainInterrupted:
    return _interrupted(signum, f"during epoch {epoch}, stopped at once: the work since "
                        f"{ckpt or 'the start'} is lost; run the same command again to continue"
                        f"{' from ' + ckpt if ckpt else ''}", ckpt, log)


def _stopped_between_epochs(signum: int, epoch: int, ckpt: str | None, log) -> TrainInterrupted:
    return _interrupted(signum, f"before epoch {epoch}: {ckpt or 'no checkpoint yet'} holds all "
                        "finished epochs; run the same command again to continue", ckpt, log)


def _interrupted(signum: int, what: str, ckpt: str | None, log) -> TrainInterrupted:
    """Log ``interrupted by SIG...`` + ``what`` and return the exception that carries it."""
    message = f"interrupted by {signal.Signals(signum).name} {what}"
    log.info(message)
    return TrainInterrupted(message, ckpt, signum)


def train(args) -> TrainSummary:
    """Train (or continue training) as configured by ``args``: a Namespace, dict or TrainConfig."""
    wall_start = time.time()
    cfg = TrainConfig.from_any(args)
    dist, device = distributed.setup(cfg.device)     # torchrun: one process per device
    ensure_writable_dir(cfg.save_path, "--save_path")   # a file, read-only or full: one line
    with run_lock(cfg.save_path, enabled=dist.is_main), \
            audio.strict_audio(cfg.strict_audio):     # in the environment: workers inherit it
        summary = _train(cfg, dist, device, wall_start)  # on error torchrun stops the other ranks
    distributed.teardown(dist)
    return summary


def _train(cfg: TrainConfig, dist, device, wall_start: float) -> TrainSummary:
    main = dist.is_main                               # rank 0 alone writes and shows progress
    progress = not cfg.no_progress and main
    os.makedirs(os.path.join(cfg.save_path, "model"), exist_ok=True)
    if main:
        _remove_stale_temp_files(os.path.join(cfg.save_path, "model"))
    log = RunLog(cfg.save_path, cfg.tensorboard) if main else distributed.QuietLog()

    # Data first: every bad input is reported before the model is built.
    train_list = TrainList.read(cfg.train_list, cfg.train_path)
    sampler = SpeakerBatchSampler(train_list.labels, cfg.batch_size, cfg.nSpeakers,
                                  cfg.max_seg_per_spk, seed=cfg.seed, rank=dist.rank,
                                  world_size=dist.world_size)
    augment = build_augmenter(cfg.musan_path, cfg.rir_path) if cfg.augment else None
    dataset = TrainCrops(train_list.paths, train_list.labels, cfg.max_frames, cfg.seed, augment,
                         on_bad_audio=cfg.on_bad_audio)
    loader = make_train_loader(dataset, sampler, cfg.nDataLoaderThread,
                               pin_memory=device.type == "cuda")
    eval_frames = _prepare_evaluation(cfg, log)
    evaluating = eval_frames is not None

    seed_everything(cfg.seed)
    net = SpeakerNet(cfg.model, cfg.encoder_type, cfg.nOut).to(device)
    objective = Objective(cfg.trainfunc, cfg.nOut, train_list.n_speakers, cfg.global_clf,
                          cfg.margin, cfg.scale, cfg.global_clf_weight).to(device)
    objective.check(net.pairwise, cfg.nSpeakers, cfg.encoder_type)
    optimizer, scheduler = make_optimizer(cfg, list(net.parameters()) + list(objective.parameters()))
    scaler = precision.Scaler(device, cfg.mixedprec)
    train_sha = train_list.sha256()
    plan = epoch_plan(cfg, dist.world_size, train_sha)
    resumed = _resume(cfg, net, objective, optimizer, scheduler, scaler, plan, dist, device, log)
    first_epoch, resumed_from, meta = resumed.first_epoch, resumed.path, resumed.meta
    precision.maybe_compile(net.backbone, cfg.compile)
    malloc_note = allocator.keep_freed_memory()     # steps reuse their memory (capsv.allocator)
    step = distributed.wrap(net, objective, cfg.batch_size, cfg.per_group_bn, dist, device)

    log.header(cfg, f"(resumed from {resumed_from})" if resumed_from else "(new run)")
    if main:
        _truncate_metrics(log.metrics, first_epoch - 1)
    if meta.get("train_list_sha256") not in (None, train_sha):
        log.info("warning: the train list changed since the checkpoint was written")
    _describe_run(log, cfg, train_list, sampler, device, first_epoch)
    decode_note = audio.training_decode_note(train_list.paths, cfg.max_frames) if main else None
    if decode_note:
        log.info(f"note: {decode_note}")
    log.info(f"memory: {malloc_note}")
    if dist.enabled:
        log.info(f"DistributedDataParallel over {dist.world_size} processes: a step takes "
                 f"{dist.world_size} batches of {cfg.batch_size} speakers (one per process)")
    budget = TrainBudget.from_meta(cfg.max_seconds, cfg.max_steps, cfg.budget_clock, meta)
    timer = EvalTimer(cfg.eval_every_seconds, cfg.eval_every_steps, budget)
    if budget.limited:
        log.info(budget.describe())
        if cfg.budget_clock == "cpu" and cfg.nDataLoaderThread > 0:
            log.info("note: the cpu clock counts this process only, not its "
                     f"{cfg.nDataLoaderThread} loader worker(s); --nDataLoaderThread 0 counts all")
    if first_epoch > cfg.max_epoch:
        log.info(f"already at epoch {first_epoch - 1} >= --max_epoch {cfg.max_epoch}; nothing to do")
    elif budget.exhausted:
        log.info(f"the training budget is already spent ({budget.seconds:.0f} s, {budget.steps} "
                 "steps); nothing to do. Raise --max_seconds/--max_steps to train on")

    latest = {}                              # the newest evaluation, by budget steps

    def evaluate_now(epoch: int) -> dict:
        if latest.get("steps") == budget.steps:          # nothing trained since
            return latest["metrics"]
        budget.pause()                       # evaluation never counts against the budget
        metrics = _evaluate(cfg, net, device, progress, log, dist, eval_frames)
        if main:
            _log_curve(log, budget, epoch, metrics, eval_frames, cfg.num_eval)
        timer.mark()
        latest.update(steps=budget.steps, metrics=metrics)
        return metrics

    def after_step(epoch: int, position: int, total: int) -> bool:
        """Budget, per-step schedule and mid-run evaluation; True ends the epoch."""
        budget.step_done()
        scheduler.progress(budget.fraction((epoch - 1 + position / total) / cfg.max_epoch))
        if budget.limited and distributed.max_int(int(budget.exhausted), dist, device):
            return True                      # the final evaluation follows the epoch's end
        if timer.enabled and distributed.max_int(int(timer.due()), dist, device):
            evaluate_now(epoch)
            net.train()
            objective.train()
            budget.start()
        return False

    stats, metrics, ckpt = None, None, resumed_from
    previous = resumed.previous                     # never delete files capsv did not write
    seconds, crops = 0.0, 0
    spent = budget.exhausted                        # from the checkpoint: the same on every rank
    faults.arm()
    epoch = first_epoch
    with StopSignals() as stop:
        try:
            for epoch in range(first_epoch, cfg.max_epoch + 1):
                if spent:
                    break
                signum = stop.poll(dist, device)        # came during the last evaluation or save
                if signum:
                    raise _stopped_between_epochs(signum, epoch, ckpt, log)
                faults.kill_if("kill_at_epoch_start")
                start = resumed.progress if epoch == first_epoch else None
                sampler.set_epoch(epoch, start.position if start else 0)
                dataset.set_epoch(epoch)
                budget.start()
                try:
                    stats = train_one_epoch(net, objective, optimizer, loader, cfg, epoch, device,
                                            progress, step, scaler, start, stop, dist,
                                            lambda pos, total: after_step(epoch, pos, total))
                except TrainStopped as stopped:
                    budget.pause()
                    meta.update(budget=budget.as_meta())
                    raise _save_interrupted(cfg, stopped, net, objective, optimizer, scheduler,
                                            scaler, meta, previous, plan, dist, log) from None
                distributed.reduce_epoch(stats, dist, device)   # the schedule sees the global loss
                budget.pause()
                # Every rank must agree (wall clocks differ): the evaluation below is collective.
                spent = budget.limited and bool(distributed.max_int(int(budget.exhausted), dist, device))
                seconds, crops = seconds + stats.seconds, crops + stats.crops
                scheduler.epoch_end(stats.loss)
                metrics = None
                last = epoch == cfg.max_epoch or spent
                if evaluating and (epoch % cfg.test_interval == 0 or last):
                    metrics = evaluate_now(epoch)
                    # The protocol travels with the threshold: it is only valid under it.
                    meta.update(eer_threshold=metrics["EER_threshold"], eer=metrics["EER"],
                                min_dcf=metrics["minDCF_p0.05"], eval_epoch=epoch,
                                **{PROTOCOL_KEY: EvalProtocol(eval_frames, cfg.num_eval).to_meta()})
                meta.update(epoch=epoch, train_list_sha256=train_sha,
                            n_train_speakers=train_list.n_speakers, budget=budget.as_meta())
                # Log first: a kill before the checkpoint lands only leaves a row that the
                # restart truncates and redoes; the other order would lose the row for good.
                log.epoch(stats, metrics)
                if main:
                    ckpt = previous = _save_epoch(cfg, epoch, net, objective, optimizer, scheduler,
                                                  scaler, meta, previous)
                else:
                    ckpt = checkpoint_path(cfg.save_path, epoch)
                if spent:
                    log.info(f"training budget spent after epoch {epoch}: {budget.seconds:.0f} s "
                             f"({budget.clock} clock), {budget.steps} steps")
            # A signal during the last evaluation or save: the run is complete, but the caller
            # (a shell loop, the demo's epoch loop) asked to stop and must hear of it.
            faults.pause_if("pause_after_run", lambda: stop.signum is not None)
            signum = stop.poll(dist, device)
            if signum:
                raise _stopped_between_epochs(signum, epoch + 1, ckpt, log)
        except TrainInterrupted:
            raise
        except KeyboardInterrupt as exc:      # a second signal, or Ctrl-C outside our handler
            signum = getattr(exc, "signum", signal.SIGINT)
            raise _stopped_at_once(signum, epoch, ckpt, log) from None
        finally:
            log.close()

    skipped_files = _report_bad_files(dataset, dist, log)
    if metrics is None and meta.get("eer") is not None:     # the last evaluation was earlier
        metrics = {"EER": meta["eer"], "EER_threshold": meta["eer_threshold"],
                   "minDCF_p0.05": meta["min_dcf"], "epoch": meta.get("eval_epoch")}
    return TrainSummary(
        save_path=cfg.save_path, first_epoch=first_epoch,
        final_epoch=stats.epoch if stats else first_epoch - 1,
        epochs_run=max(0, cfg.max_epoch - first_epoch + 1),
        loss=stats.loss if stats else None, acc=stats.acc if stats else None,
        lr=current_lr(optimizer), metrics=metrics, wall_time_s=time.time() - wall_start,
        samples_per_s=crops / seconds if seconds > 0 else 0.0,
        checkpoint=ckpt, resumed_from=resumed_from, skipped_files=skipped_files,
        budget=budget.as_meta())


def _report_bad_files(dataset: TrainCrops, dist, log) -> list[str]:
    """Every bad file any process skipped (the batches brought them to their rank's
    training process; under DDP the ranks' lists are merged), with one summary line."""
    names = sorted(set().union(*distributed.gather(sorted(dataset.bad_files), dist)))
    if names:
        shown = ", ".join(names[:10]) + (f", ... {len(names) - 10} more" if len(names) > 10 else "")
        log.info(f"skipped {len(names)} bad training file(s) (--on_bad_audio skip): {shown}")
    return names


__all__ = ["TrainConfig", "TrainSummary", "TrainError", "TrainInterrupted", "train",
           "forward_batch", "load_initial_model", "latest_checkpoint", "list_checkpoints"]
