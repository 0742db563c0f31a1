"""Training (spec §4): ``capsv.train.train(config)`` runs or continues a run.

    summary = capsv.train.train({"train_list": ..., "train_path": ..., "save_path": ...})

The package, in the order a run uses it:

- :mod:`.config`: every option (:class:`TrainConfig`), :class:`TrainSummary`, :class:`TrainError`;
- :mod:`.state`: :class:`TrainState`, the network, objective, optimiser, schedule and grad
  scaler with their save and resume; :mod:`.checkpoints`: the run's checkpoint files;
  :mod:`.rng`: the RNG states saved with them;
- :mod:`.loop`: the loop (stop check -> epoch -> schedule -> evaluate -> log -> save);
- :mod:`.step`: one optimiser step and one epoch; :mod:`.forward`: one batch's loss;
  :mod:`.losses`: the objectives; :mod:`.schedule`: LR schedules; :mod:`.budget`: the time
  and step budget; :mod:`.precision`: mixed precision and compilation;
- :mod:`.signals`: SIGINT/SIGTERM; :mod:`.runlog`: what the run prints and writes;
- :mod:`.distributed`: the same loop under torchrun (DDP).

Evaluation during training is :mod:`capsv.evaluation`'s one pipeline.
"""
from .checkpoints import (checkpoint_path, curve_path, interrupted_path, latest_checkpoint,
                          list_checkpoints)
from .config import TrainConfig, TrainError, TrainSummary
from .forward import forward_batch
from .loop import EpochReport, train
from .rng import rng_state, seed_everything, set_rng_state
from .signals import TrainInterrupted
from .state import (RESUME_FREE, RESUME_KEPT, RESUME_REFUSED, TrainState, check_resume_flags,
                    load_initial_model)
from .step import EpochProgress, EpochStats, current_lr, make_optimizer, train_one_epoch

__all__ = ["TrainConfig", "TrainSummary", "TrainError", "TrainInterrupted", "TrainState",
           "EpochReport", "EpochStats", "EpochProgress", "train", "train_one_epoch",
           "forward_batch", "make_optimizer", "current_lr", "load_initial_model",
           "check_resume_flags", "RESUME_REFUSED", "RESUME_KEPT", "RESUME_FREE",
           "latest_checkpoint", "list_checkpoints", "checkpoint_path", "curve_path", "interrupted_path",
           "rng_state", "set_rng_state", "seed_everything"]
