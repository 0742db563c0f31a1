"""Every training option (:class:`TrainConfig`, the flags of ``capsv train``), the error of a
run that cannot start or continue, and what :func:`capsv.train.train` returns."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields

from ..errors import CapsvError
from ..evaluation.policy import EVAL_SHORT
from ..models import BACKBONES
from ..models.pooling import POOLINGS
from ..protocol import EVAL_FRAMES, NUM_EVAL
from .budget import CLOCKS
from .losses import LOSSES
from .schedule import SCHEDULES


class TrainError(CapsvError):
    """A training run that cannot start or continue; the message says why."""


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
    speed_perturb: bool = False           # 0.9x / 1.1x copies as new speakers (capsv.data.speed)
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
    lr_schedule: str = "plateau"          # the paper's; or cosine (see capsv.train.schedule)
    warmup: float = 0.05                  # cosine: share of the run spent warming up
    final_lr: float = 0.01                # cosine: last LR as a share of --lr
    max_epoch: int = 500
    max_steps: int = 0                    # 0: no limit (capsv.train.budget)
    max_seconds: float = 0.0              # 0: no limit; training time only (capsv.train.budget)
    budget_clock: str = "wall"            # or cpu: process CPU time (capsv.train.budget)
    test_interval: int = 5
    eval_every_seconds: float = 0.0       # also evaluate mid-run this often (budget clock)
    eval_every_steps: int = 0             # ... or every this many optimiser steps
    keep_curve_models: bool = False       # also save model/curve%09d.model at those points
    per_group_bn: bool = False
    # evaluation
    test_list: str | None = None
    test_path: str = "./data/voxceleb1"
    eval_frames: int = EVAL_FRAMES
    num_eval: int = NUM_EVAL
    eval_short: str = "auto"              # or pad: see capsv.evaluation.policy
    on_bad_audio: str = "error"           # or "skip": see --on_bad_audio
    strict_audio: bool = False            # refuse audio that is not 16 kHz (else resampled)
    # files and runtime
    save_path: str = "./data/exp1"
    initial_model: str = ""
    device: str = "auto"
    mixedprec: bool = False
    compile: bool = False
    channels_last: bool = False           # NHWC convolutions (capsv.train.precision)
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
