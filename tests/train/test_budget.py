"""Training budgets (--max_steps, --max_seconds, --budget_clock), the cosine schedule,
mid-run evaluation (--eval_every_steps -> result/curve.jsonl) and whole-utterance evaluation
chosen for short test files (--eval_short)."""
from __future__ import annotations

import json
import time

import pytest
import torch

from capsv.train.budget import EvalTimer, TrainBudget
from capsv.models.checkpoint import read_checkpoint
from capsv.evaluation.policy import choose_eval_frames
from capsv.train.schedule import CosineSchedule, PlateauSchedule
from capsv.train import TrainConfig, TrainError, train

from speech_like import make_corpus, write_train_list, write_trials


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    # 12 speakers x 4 utterances -> 24 groups of 2 -> 6 steps of 4 speakers per epoch.
    write_train_list(str(root / "train.txt"), make_corpus(str(root / "train"), 12, 4,
                                                          seconds=(0.4, 0.8), seed=3))
    # Test files of 0.5-0.9 s: all shorter than one 350-frame crop.
    write_trials(str(root / "trials.txt"), make_corpus(str(root / "test"), 3, 2,
                                                       seconds=(0.5, 0.9), seed=4, prefix="heldout"))
    return root


def _config(root, save_path, **extra) -> dict:
    config = dict(model="ResNetSE34L", encoder_type="TAP", nOut=32, trainfunc="proto",
                  global_clf=True, nSpeakers=2, batch_size=4, max_frames=20, optimizer="adam",
                  lr=0.002, nDataLoaderThread=0, seed=1, device="cpu", no_progress=True,
                  train_list=str(root / "train.txt"), train_path=str(root / "train"),
                  test_list=str(root / "trials.txt"), test_path=str(root / "test"),
                  save_path=str(save_path), test_interval=100, num_eval=2)
    return {**config, **extra}


def _curve(save_path) -> list[dict]:
    return [json.loads(line) for line in (save_path / "result" / "curve.jsonl").read_text().splitlines()]


def test_max_steps_stops_mid_epoch_with_a_checkpoint_a_curve_and_a_resumable_budget(data, tmp_path, one_thread):
    run = tmp_path / "run"
    summary = train(_config(data, run, max_steps=9, eval_every_steps=4, lr_schedule="cosine"))
    # 9 steps = one epoch of 6 + 3 steps of the second, which ends there.
    assert summary.final_epoch == 2 and summary.budget["steps"] == 9
    ckpt = read_checkpoint(summary.checkpoint)
    assert ckpt["meta"]["budget"]["steps"] == 9
    # evaluated at steps 4 and 8 (mid-run) and 9 (the end), once each
    assert [row["steps"] for row in _curve(run)] == [4, 8, 9]
    assert summary.metrics is not None and ckpt["meta"]["eval_epoch"] == 2
    # the cosine schedule reached its end: LR = final_lr x lr
    assert summary.lr == pytest.approx(0.002 * 0.01, rel=1e-6)
    assert not list((run / "model").glob("curve*.model"))     # only when asked

    # Same command, larger budget: continues from the checkpoint, counting the 9 steps spent.
    summary = train(_config(data, run, max_steps=14, eval_every_steps=4, lr_schedule="cosine"))
    assert summary.first_epoch == 3 and summary.budget["steps"] == 14
    assert [row["steps"] for row in _curve(run)] == [4, 8, 9, 13, 14]
    # Spent budget: nothing to do, no new checkpoint.
    again = train(_config(data, run, max_steps=14, lr_schedule="cosine"))
    assert again.checkpoint == summary.checkpoint and again.budget["steps"] == 14


def test_max_seconds_on_the_cpu_clock_stops_training(data, tmp_path, one_thread):
    start = time.process_time()
    summary = train(_config(data, tmp_path / "run", max_seconds=2.0, budget_clock="cpu",
                            test_list=None))
    spent = summary.budget["seconds"]
    assert summary.budget["clock"] == "cpu"
    # Stops on the first step past 2 s: one step (~0.1-0.5 s here) over at most.
    assert 2.0 <= spent < 2.0 + 3.0
    assert time.process_time() - start >= spent
    assert summary.final_epoch < 500


def test_the_stored_protocol_is_the_one_evaluated_with(data, tmp_path, one_thread, capsys):
    auto = train(_config(data, tmp_path / "auto", max_steps=2))
    assert "scoring whole utterances instead" in capsys.readouterr().out
    assert read_checkpoint(auto.checkpoint)["meta"]["eval_protocol"] == {"eval_frames": 0, "num_eval": 2}
    padded = train(_config(data, tmp_path / "pad", max_steps=2, eval_short="pad"))
    assert read_checkpoint(padded.checkpoint)["meta"]["eval_protocol"] == {"eval_frames": 350, "num_eval": 2}


def test_bad_budget_flags_are_refused():
    for bad in (dict(max_seconds=-1), dict(budget_clock="gpu"), dict(lr_schedule="step"),
                dict(warmup=1.0), dict(eval_short="never")):
        with pytest.raises(TrainError):
            TrainConfig.from_any(bad)


def test_budget_counts_only_between_start_and_pause():
    budget = TrainBudget(max_seconds=10.0, clock="wall")
    budget.start()
    time.sleep(0.05)
    budget.step_done()
    budget.pause()
    time.sleep(0.1)                       # paused: evaluation time, not counted
    assert 0.04 < budget.seconds < 0.09 and budget.steps == 1
    assert budget.fraction() == pytest.approx(budget.seconds / 10.0)
    resumed = TrainBudget.from_meta(10.0, 0, "wall", {"budget": budget.as_meta()})
    assert resumed.seconds == budget.seconds and resumed.steps == 1
    other_clock = TrainBudget.from_meta(10.0, 0, "cpu", {"budget": budget.as_meta()})
    assert other_clock.seconds == 0.0 and other_clock.steps == 1
    timer = EvalTimer(every_steps=2, budget=resumed)
    resumed.step_done()
    assert not timer.due()                # counted from where the resumed run starts
    resumed.step_done()
    assert timer.due()
    timer.mark()
    assert not timer.due()


def test_cosine_schedule_warms_up_then_anneals_to_its_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = CosineSchedule(opt, base_lr=1.0, warmup=0.1, final_lr=0.01)
    assert schedule.lr_at(0.05) == pytest.approx(0.5)
    assert schedule.lr_at(0.1) == pytest.approx(1.0)
    assert schedule.lr_at(0.55) == pytest.approx(0.505)
    assert schedule.lr_at(1.0) == pytest.approx(0.01)
    lrs = [schedule.lr_at(f / 100) for f in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    schedule.progress(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


def test_plateau_schedule_keeps_the_torch_state_format():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1, threshold=1e-4)
    ours = PlateauSchedule(opt, patience=1)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    for loss in (1.0, 1.0, 1.0, 1.0):
        ours.epoch_end(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_whole_utterances_only_when_most_files_are_short():
    crop = 350 * 160 + 240
    assert choose_eval_frames([crop - 1] * 6 + [crop] * 4, 350)[0] == 0
    assert choose_eval_frames([crop - 1] * 5 + [crop] * 5, 350) == (350, None)
    assert choose_eval_frames([crop - 1] * 10, 350, "pad") == (350, None)
    assert choose_eval_frames([100] * 3, 0) == (0, None)


def test_curve_models_are_kept_at_each_point_without_a_test_list(data, tmp_path, one_thread):
    run = tmp_path / "run"
    train(_config(data, run, max_steps=7, eval_every_steps=3, keep_curve_models=True,
                  test_list=None))
    kept = sorted(p.name for p in (run / "model").glob("curve*.model"))
    assert kept == ["curve000000003.model", "curve000000006.model"]
    assert read_checkpoint(run / "model" / kept[1])["meta"]["budget"]["steps"] == 6
    assert not (run / "result" / "curve.jsonl").exists()
