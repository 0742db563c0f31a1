"""Training: the paper's recipe (spec §4) in one obvious loop, resumable.

The loop reads in one pass: stop check -> epoch (steps) -> schedule -> evaluate -> log -> save
(:func:`_run_epochs`); :class:`Run` holds what it works on.

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
Under ``torchrun`` the same loop runs on every rank with DDP (see :mod:`capsv.train.distributed`);
``--mixedprec``/``--compile``: :mod:`capsv.train.precision`; the time budget:
:mod:`capsv.train.budget`; the state and its checkpoints: :mod:`capsv.train.state`.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Callable

from .. import allocator, audio, faults
from ..data.dataset import TrainCrops, TrainList, build_augmenter, make_train_loader
from ..data.lists import read_trials
from ..evaluation.pipeline import evaluate_list
from ..evaluation.inputs import validate_inputs, warn_if_crops_are_mostly_padding
from ..evaluation.policy import choose_eval_frames
from ..evaluation.sharded import sharded_extractor
from ..protocol import EvalProtocol, META_KEY as PROTOCOL_KEY
from ..runlock import run_lock
from ..data.sampler import SpeakerBatchSampler
from ..data.speed import SPEEDS
from ..utils import ensure_writable_dir
from . import distributed, precision
from .budget import EvalTimer, TrainBudget
from .checkpoints import checkpoint_path, remove_stale_temp_files
from .config import TrainConfig, TrainSummary
from .runlog import RunLog
from .signals import (StopSignals, TrainInterrupted, TrainStopped, stopped_at_once,
                      stopped_between_epochs)
from .state import Resumed, TrainState, epoch_plan
from .step import EpochStats, train_one_epoch


@dataclass
class EpochReport:
    """What the ``on_epoch`` callback of :func:`train` receives after each saved epoch."""
    epoch: int
    stats: EpochStats
    metrics: dict | None          # this epoch's evaluation, if it had one
    checkpoint: str               # the epoch's checkpoint (written by rank 0)
    budget: dict                  # training seconds and steps spent so far, all runs


def train(args, on_epoch: Callable[[EpochReport], None] | None = None) -> TrainSummary:
    """Train (or continue training) as configured by ``args``: a Namespace, dict or TrainConfig.
    ``on_epoch``: called with an :class:`EpochReport` after every epoch's checkpoint."""
    wall_start = time.time()
    cfg = TrainConfig.from_any(args)
    dist, device = distributed.setup(cfg.device)     # torchrun: one process per device
    ensure_writable_dir(cfg.save_path, "--save_path")   # a file, read-only or full: one line
    with run_lock(cfg.save_path, enabled=dist.is_main), \
            audio.strict_audio(cfg.strict_audio):     # in the environment: workers inherit it
        run = Run(cfg, dist, device)                # on error torchrun stops the other ranks
        _run_epochs(run, on_epoch)
        summary = run.summary(wall_start)
    distributed.teardown(dist)
    return summary


def _run_epochs(run: "Run", on_epoch) -> None:
    """The loop: stop check -> epoch -> schedule -> evaluate -> log -> save, per epoch."""
    epoch = run.first_epoch
    with StopSignals() as stop:
        try:
            for epoch in range(run.first_epoch, run.cfg.max_epoch + 1):
                if run.spent:
                    break
                run.check_stop(stop, epoch)
                stats = run.train_epoch(epoch, stop)
                run.schedule(stats)
                metrics = run.evaluate_if_due(epoch)
                checkpoint = run.log_and_save(epoch, stats, metrics)
                if on_epoch is not None:
                    on_epoch(EpochReport(epoch, stats, metrics, checkpoint, run.budget.as_meta()))
            # A signal during the last evaluation or save: the run is complete, but the caller
            # (a shell loop, the demo's epoch loop) asked to stop and must hear of it.
            faults.pause_if("pause_after_run", lambda: stop.signum is not None)
            run.check_stop(stop, epoch + 1)
        except TrainInterrupted:
            raise
        except KeyboardInterrupt as exc:      # a second signal, or Ctrl-C outside our handler
            signum = getattr(exc, "signum", signal.SIGINT)
            raise stopped_at_once(signum, epoch, run.ckpt, run.log) from None
        finally:
            run.log.close()


class Run:
    """One run being executed: its data, :class:`TrainState`, log, budget and the results so
    far. Built before the loop: every bad input is reported before any training."""

    def __init__(self, cfg: TrainConfig, dist, device):
        self.cfg, self.dist, self.device = cfg, dist, device
        self.main = dist.is_main                      # rank 0 alone writes and shows progress
        self.progress = not cfg.no_progress and self.main
        os.makedirs(os.path.join(cfg.save_path, "model"), exist_ok=True)
        if self.main:
            remove_stale_temp_files(os.path.join(cfg.save_path, "model"))
        self.log = RunLog(cfg.save_path, cfg.tensorboard, quiet=not self.main)
        self._read_data()
        self.eval_frames = _prepare_evaluation(cfg, self.log)
        self.state = TrainState.build(cfg, self.train_list.n_speakers, device)
        self.plan = epoch_plan(cfg, dist.world_size, self.train_sha)
        self.resumed: Resumed = self.state.resume(self.plan, dist, device, self.log)
        self.first_epoch = self.resumed.first_epoch
        precision.maybe_compile(self.state.net.backbone, cfg.compile)
        self.malloc_note = allocator.keep_freed_memory()   # steps reuse their memory
        self.step = distributed.wrap(self.state.net, self.state.objective, cfg.batch_size,
                                     cfg.per_group_bn, dist, device)
        self.budget = TrainBudget.from_meta(cfg.max_seconds, cfg.max_steps, cfg.budget_clock,
                                            self.state.meta)
        self.timer = EvalTimer(cfg.eval_every_seconds, cfg.eval_every_steps, self.budget)
        self._describe()
        self.stats: EpochStats | None = None
        self.metrics: dict | None = None
        self.ckpt = self.resumed.path                 # the newest checkpoint of this run
        self.seconds, self.crops = 0.0, 0
        self.spent = self.budget.exhausted            # from the checkpoint: the same on every rank
        self.latest: dict = {}                        # the newest evaluation, by budget steps
        faults.arm()

    def _read_data(self) -> None:
        cfg, dist = self.cfg, self.dist
        self.train_list = TrainList.read(cfg.train_list, cfg.train_path,
                                         speeds=SPEEDS if cfg.speed_perturb else ())
        self.sampler = SpeakerBatchSampler(self.train_list.labels, cfg.batch_size, cfg.nSpeakers,
                                           cfg.max_seg_per_spk, seed=cfg.seed, rank=dist.rank,
                                           world_size=dist.world_size)
        augment = build_augmenter(cfg.musan_path, cfg.rir_path) if cfg.augment else None
        self.dataset = TrainCrops(self.train_list.paths, self.train_list.labels, cfg.max_frames,
                                  cfg.seed, augment, on_bad_audio=cfg.on_bad_audio,
                                  speeds=self.train_list.speeds if cfg.speed_perturb else None)
        self.loader = make_train_loader(self.dataset, self.sampler, cfg.nDataLoaderThread,
                                        pin_memory=self.device.type == "cuda")
        self.train_sha = self.train_list.sha256()

    def _describe(self) -> None:
        cfg, log, dist, meta = self.cfg, self.log, self.dist, self.state.meta
        resumed_from = self.resumed.path
        log.header(cfg, f"(resumed from {resumed_from})" if resumed_from else "(new run)")
        log.truncate(self.first_epoch - 1)
        if meta.get("train_list_sha256") not in (None, self.train_sha):
            log.info("warning: the train list changed since the checkpoint was written")
        _describe_run(log, cfg, self.train_list, self.sampler, self.device, self.first_epoch)
        decode_note = (audio.training_decode_note(self.train_list.paths, cfg.max_frames)
                       if self.main else None)
        if decode_note:
            log.info(f"note: {decode_note}")
        log.info(f"memory: {self.malloc_note}")
        if dist.enabled:
            log.info(f"DistributedDataParallel over {dist.world_size} processes: a step takes "
                     f"{dist.world_size} batches of {cfg.batch_size} speakers (one per process)")
        budget = self.budget
        if budget.limited:
            log.info(budget.describe())
            if cfg.budget_clock == "cpu" and cfg.nDataLoaderThread > 0:
                log.info("note: the cpu clock counts this process only, not its "
                         f"{cfg.nDataLoaderThread} loader worker(s); --nDataLoaderThread 0 counts all")
        if self.first_epoch > cfg.max_epoch:
            log.info(f"already at epoch {self.first_epoch - 1} >= --max_epoch {cfg.max_epoch}; "
                     "nothing to do")
        elif budget.exhausted:
            log.info(f"the training budget is already spent ({budget.seconds:.0f} s, "
                     f"{budget.steps} steps); nothing to do. Raise --max_seconds/--max_steps to "
                     "train on")

    # -- the steps of one epoch, in the loop's order ------------------------------------------
    def check_stop(self, stop: StopSignals, epoch: int) -> None:
        """A signal that came during the last evaluation or save stops before ``epoch``."""
        signum = stop.poll(self.dist, self.device)
        if signum:
            raise stopped_between_epochs(signum, epoch, self.ckpt, self.log)

    def train_epoch(self, epoch: int, stop: StopSignals) -> EpochStats:
        """This rank's batches of ``epoch`` (the rest of them after an interrupted pass);
        a stop signal saves where it stopped and raises."""
        faults.kill_if("kill_at_epoch_start")
        start = self.resumed.progress if epoch == self.first_epoch else None
        self.sampler.set_epoch(epoch, start.position if start else 0)
        self.dataset.set_epoch(epoch)
        self.budget.start()
        state = self.state
        try:
            stats = train_one_epoch(state.net, state.objective, state.optimizer, self.loader,
                                    self.cfg, epoch, self.device, self.progress, self.step,
                                    state.scaler, start, stop, self.dist,
                                    lambda pos, total: self.after_step(epoch, pos, total))
        except TrainStopped as stopped:
            self.budget.pause()
            state.meta.update(budget=self.budget.as_meta())
            raise state.save_interrupted(stopped, self.plan, self.dist, self.log) from None
        distributed.reduce_epoch(stats, self.dist, self.device)   # the schedule sees the global loss
        self.budget.pause()
        self.stats = stats
        self.seconds, self.crops = self.seconds + stats.seconds, self.crops + stats.crops
        return stats

    def after_step(self, epoch: int, position: int, total: int) -> bool:
        """Budget, per-step schedule and mid-run evaluation; True ends the epoch."""
        budget, dist, device = self.budget, self.dist, self.device
        budget.step_done()
        self.state.scheduler.progress(budget.fraction((epoch - 1 + position / total) /
                                                      self.cfg.max_epoch))
        if budget.limited and distributed.max_int(int(budget.exhausted), dist, device):
            return True                      # the final evaluation follows the epoch's end
        if self.timer.enabled and distributed.max_int(int(self.timer.due()), dist, device):
            budget.pause()
            if self.eval_frames is not None:
                self.evaluate_now(epoch)
                self.state.train_mode()
            if self.cfg.keep_curve_models and self.main:
                self.state.save_curve_model(epoch, budget.as_meta(), budget.steps)
            self.timer.mark()
            budget.start()
        return False

    def schedule(self, stats: EpochStats) -> None:
        """The epoch's end for the LR schedule; and whether the budget is spent, agreed by
        every rank (wall clocks differ, and the evaluation that follows is collective)."""
        budget = self.budget
        self.spent = budget.limited and bool(distributed.max_int(int(budget.exhausted),
                                                                 self.dist, self.device))
        self.state.scheduler.epoch_end(stats.loss)

    def evaluate_if_due(self, epoch: int) -> dict | None:
        """Every ``test_interval`` epochs and at the last one; the threshold goes into the
        checkpoint meta with the protocol it was measured with (it is only valid under it)."""
        cfg = self.cfg
        self.metrics = None
        last = epoch == cfg.max_epoch or self.spent
        if self.eval_frames is None or not (epoch % cfg.test_interval == 0 or last):
            return None
        metrics = self.metrics = self.evaluate_now(epoch)
        self.state.meta.update(eer_threshold=metrics["EER_threshold"], eer=metrics["EER"],
                               min_dcf=metrics["minDCF_p0.05"], eval_epoch=epoch,
                               **{PROTOCOL_KEY: EvalProtocol(self.eval_frames,
                                                             cfg.num_eval).to_meta()})
        return metrics

    def evaluate_now(self, epoch: int) -> dict:
        budget = self.budget
        if self.latest.get("steps") == budget.steps:          # nothing trained since
            return self.latest["metrics"]
        budget.pause()                       # evaluation never counts against the budget
        metrics = _evaluate(self.cfg, self.state.net, self.device, self.progress, self.log,
                            self.dist, self.eval_frames)
        self.log.curve({"epoch": epoch, "steps": budget.steps,
                        "train_seconds": round(budget.seconds, 3), "clock": budget.clock,
                        "eval_frames": self.eval_frames, "num_eval": self.cfg.num_eval, **metrics})
        self.timer.mark()
        self.latest.update(steps=budget.steps, metrics=metrics)
        return metrics

    def log_and_save(self, epoch: int, stats: EpochStats, metrics: dict | None) -> str:
        """Log first: a kill before the checkpoint lands only leaves a row that the restart
        truncates and redoes; the other order would lose the row for good."""
        budget = self.budget
        self.state.meta.update(epoch=epoch, train_list_sha256=self.train_sha,
                               n_train_speakers=self.train_list.n_speakers,
                               budget=budget.as_meta())
        self.log.epoch(stats, metrics)
        if self.main:
            self.ckpt = self.state.save_epoch(epoch)
        else:
            self.ckpt = checkpoint_path(self.cfg.save_path, epoch)
        if self.spent:
            self.log.info(f"training budget spent after epoch {epoch}: {budget.seconds:.0f} s "
                          f"({budget.clock} clock), {budget.steps} steps")
        return self.ckpt

    # -- the end -------------------------------------------------------------------------------
    def summary(self, wall_start: float) -> TrainSummary:
        skipped_files = _report_bad_files(self.dataset, self.dist, self.log)
        metrics, meta, stats, cfg = self.metrics, self.state.meta, self.stats, self.cfg
        if metrics is None and meta.get("eer") is not None:     # the last evaluation was earlier
            metrics = {"EER": meta["eer"], "EER_threshold": meta["eer_threshold"],
                       "minDCF_p0.05": meta["min_dcf"], "epoch": meta.get("eval_epoch")}
        return TrainSummary(
            save_path=cfg.save_path, first_epoch=self.first_epoch,
            final_epoch=stats.epoch if stats else self.first_epoch - 1,
            epochs_run=max(0, cfg.max_epoch - self.first_epoch + 1),
            loss=stats.loss if stats else None, acc=stats.acc if stats else None,
            lr=self.state.lr, metrics=metrics, wall_time_s=time.time() - wall_start,
            samples_per_s=self.crops / self.seconds if self.seconds > 0 else 0.0,
            checkpoint=self.ckpt, resumed_from=self.resumed.path, skipped_files=skipped_files,
            budget=self.budget.as_meta())


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


def _evaluate(cfg: TrainConfig, net, device, progress: bool, log: RunLog,
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


def _report_bad_files(dataset: TrainCrops, dist, log) -> list[str]:
    """Every bad file any process skipped (the batches brought them to their rank's
    training process; under DDP the ranks' lists are merged), with one summary line."""
    names = sorted(set().union(*distributed.gather(sorted(dataset.bad_files), dist)))
    if names:
        shown = ", ".join(names[:10]) + (f", ... {len(names) - 10} more" if len(names) > 10 else "")
        log.info(f"skipped {len(names)} bad training file(s) (--on_bad_audio skip): {shown}")
    return names
