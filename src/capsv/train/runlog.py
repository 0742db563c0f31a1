"""What a run tells: stdout, ``result/scores.txt`` (the reference's format),
``result/metrics.jsonl`` (one row per epoch), ``result/curve.jsonl`` (one row per
evaluation, against training time) and optionally TensorBoard. Every write is atomic."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

from ..utils import atomic_write_text
from .checkpoints import remove_stale_temp_files


def append_atomic(path: str, text: str) -> None:
    old = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
    atomic_write_text(path, old + text)


def truncate_metrics(path: str, last_epoch: int) -> None:
    """Drop metrics of epochs after the checkpoint a run resumes from (they will be redone)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        rows = [line for line in f if line.strip()]
    kept = [line for line in rows if json.loads(line).get("epoch", 0) <= last_epoch]
    if len(kept) != len(rows):
        atomic_write_text(path, "".join(kept))


class RunLog:
    """stdout + ``result/scores.txt`` + ``result/metrics.jsonl`` + ``result/curve.jsonl``
    (+ TensorBoard if asked). ``quiet``: the log of ranks other than 0 under torchrun, which
    print and write nothing (rank 0 tells for all); every output passes :meth:`_say` or
    :meth:`_append`, so one flag silences all of it."""

    def __init__(self, save_path: str, tensorboard: bool, quiet: bool = False):
        self.quiet = quiet
        self.result_dir = os.path.join(save_path, "result")
        self.scores = os.path.join(self.result_dir, "scores.txt")
        self.metrics = os.path.join(self.result_dir, "metrics.jsonl")
        self.curve_path = os.path.join(self.result_dir, "curve.jsonl")
        self.writer = None
        if quiet:
            return
        os.makedirs(self.result_dir, exist_ok=True)
        remove_stale_temp_files(self.result_dir)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(save_path, "tensorboard"))
            except ImportError:
                self.info("warning: --tensorboard needs the tensorboard package; not logging to it")

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)

    def _append(self, path: str, text: str) -> None:
        if not self.quiet:
            append_atomic(path, text)

    def info(self, message: str) -> None:
        self._say(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}")

    def header(self, cfg, note: str) -> None:
        lines = [f"# capsv train {time.strftime('%Y-%m-%d %H:%M:%S')} {note}"]
        lines += [f"{k} {v}" for k, v in asdict(cfg).items()]
        self._append(self.scores, "\n".join(lines) + "\n")

    def epoch(self, stats, metrics: dict | None) -> None:
        """The epoch's line and row (``stats``: :class:`~capsv.train.step.EpochStats`)."""
        line = (f"IT {stats.epoch}, LR {stats.lr:f}, TEER/T1 {stats.acc:2.2f}, "
                f"TLOSS {stats.loss:f}")
        row = {"epoch": stats.epoch, "loss": stats.loss, "acc": stats.acc, "lr": stats.lr,
               "samples_per_s": stats.samples_per_s, "seconds": stats.seconds,
               "steps": stats.steps, **stats.parts}
        if metrics:
            line += f", VEER {metrics['EER']:2.4f}, MinDCF {metrics['minDCF_p0.05']:.5f}"
            row.update(metrics)
        self._append(self.scores, line + "\n")
        self._append(self.metrics, json.dumps(row) + "\n")
        self.info(line)
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, stats.epoch)
            self.writer.flush()

    def curve(self, row: dict) -> None:
        """One row of ``result/curve.jsonl``: an evaluation against training time and steps."""
        self._append(self.curve_path, json.dumps(row) + "\n")

    def truncate(self, last_epoch: int) -> None:
        """A resumed run redoes the epochs after its checkpoint: drop their rows."""
        if not self.quiet:
            truncate_metrics(self.metrics, last_epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
