"""The training loop's epoch callback: the caller hears of every saved epoch in order, with
its statistics, evaluation and checkpoint, in one call of ``train`` (the demo once called
``train`` once per epoch to get this)."""
from __future__ import annotations

import os

import pytest
import torch

from capsv.models.checkpoint import read_checkpoint
from capsv.train import EpochReport, train

from speech_like import make_corpus, write_train_list, write_trials


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    write_train_list(str(root / "train.txt"),
                     make_corpus(str(root / "train"), 6, 3, seconds=(0.3, 0.6), seed=5))
    write_trials(str(root / "trials.txt"),
                 make_corpus(str(root / "test"), 3, 2, seconds=(0.6, 0.9), seed=6, prefix="t"))
    return root


def _config(root, save):
    return dict(model="ResNetSE34L", encoder_type="TAP", nOut=16, trainfunc="proto",
                nSpeakers=2, batch_size=3, max_frames=10, max_epoch=3, test_interval=2,
                train_list=str(root / "train.txt"), train_path=str(root / "train"),
                test_list=str(root / "trials.txt"), test_path=str(root / "test"),
                eval_frames=0, save_path=str(save), nDataLoaderThread=0, no_progress=True)


def test_on_epoch_reports_every_saved_epoch(corpus, tmp_path):
    torch.set_num_threads(1)
    reports: list[EpochReport] = []

    def on_epoch(report: EpochReport) -> None:
        assert os.path.exists(report.checkpoint)          # called after the save
        reports.append(report)

    summary = train(_config(corpus, tmp_path / "run"), on_epoch=on_epoch)
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert [r.metrics is not None for r in reports] == [False, True, True]   # interval 2, last
    assert reports[-1].checkpoint == summary.checkpoint
    assert reports[-1].stats.loss == pytest.approx(summary.loss)
    assert reports[-1].metrics["EER"] == pytest.approx(summary.eer)
    assert reports[-1].budget["steps"] == summary.budget["steps"] > 0
    assert read_checkpoint(reports[1].checkpoint)["meta"]["epoch"] == 2
    # a resumed run reports only the epochs it runs
    again: list[EpochReport] = []
    train(dict(_config(corpus, tmp_path / "run"), max_epoch=4), on_epoch=again.append)
    assert [r.epoch for r in again] == [4]
