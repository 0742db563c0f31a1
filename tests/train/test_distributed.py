"""Multi-process training with a real ``torchrun`` (gloo, 2 processes on CPU).

What is compared, and why the comparison is exact for the math:
under DDP with 2 ranks, step k of an epoch runs rank 0 on global batch 2k and rank 1 on
batch 2k+1 of the sampler's plan, each backbone forward with its own BatchNorm statistics,
and applies the average of the two gradients. The single-process reference below does the
same computation in one process: it runs the network separately on batch 2k and on batch
2k+1 (so each forward has the same BatchNorm batch statistics as the rank that ran it),
averages the two losses (whose gradient is the average of the gradients) and takes one SGD
step. Trained *parameters* must then agree up to float summation order (tolerance 1e-5).
BatchNorm *running* statistics are not compared: DDP broadcasts rank 0's before each forward,
the reference updates them with both halves; they do not enter a training-mode forward.
The two ranks must hold bit-identical parameters (same averaged gradient on both).
The run is split in two launches (epoch 1, then resume to epoch 2) so resuming under DDP is
covered; evaluation (sharded feature extraction) must give the single-process EER.

The corpus is tiny on purpose: 6 speakers x 2 utterances make 2 batches of 3 speakers per
epoch, i.e. one DDP step per epoch. Longer runs are not a sharper test here: with 3-speaker
batches, BatchNorm over so few values amplifies float rounding (1e-7) into 1e-3 differences
within a few steps (seen with 4 steps per epoch), for DDP and for any reordering of the sums.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from capsv.data.dataset import TrainCrops, TrainList
from capsv.data.sampler import SpeakerBatchSampler
from capsv.evaluation.pipeline import evaluate_list
from capsv.train.losses import Objective
from capsv.models import SpeakerNet
from capsv.train import TrainConfig, forward_batch, make_optimizer, seed_everything

from speech_like import make_corpus, write_train_list, write_trials

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    write_train_list(str(root / "train.txt"), make_corpus(str(root / "wav"), 6, 2, seconds=(0.3, 0.5), seed=5))
    write_trials(str(root / "trials.txt"), make_corpus(str(root / "test"), 4, 3, seconds=(0.4, 0.6),
                                                       seed=6, prefix="heldout"))
    return root


def _config(root: Path) -> dict:
    return dict(model="ResNetSE34L", encoder_type="CAP", nOut=16, trainfunc="proto",
                global_clf=True, nSpeakers=2, batch_size=3, max_frames=10, lr=0.01,
                train_list=str(root / "train.txt"), train_path=str(root / "wav"),
                test_list=str(root / "trials.txt"), test_path=str(root / "test"),
                eval_frames=20, num_eval=2, test_interval=2, nDataLoaderThread=0, device="cpu",
                no_progress=True, seed=3)


def _torchrun_command(config: dict, save_path: Path, max_epoch: int, out: Path, fault: str = ""):
    """(argv, env) of ``torchrun --nproc_per_node 2 distributed_worker.py train ...``."""
    argv = ["train", "--save_path", str(save_path), "--max_epoch", str(max_epoch)]
    for key, value in config.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is not False:
            argv += [f"--{key}", str(value)]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HERE}", "OMP_NUM_THREADS": "1",
           "CAPSV_TEST_OUT": str(out), "CAPSV_FAULT": fault, "CAPSV_FAULT_RANK": "1"}
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(HERE / "distributed_worker.py"), *argv], env


def _torchrun(config: dict, save_path: Path, max_epoch: int, out: Path) -> str:
    command, env = _torchrun_command(config, save_path, max_epoch, out)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _single_process_reference(config: dict, epochs: int) -> dict:
    """The same two-rank training computed in one process (see the module docstring)."""
    cfg = TrainConfig.from_any(config)
    data = TrainList.read(cfg.train_list, cfg.train_path)
    sampler = SpeakerBatchSampler(data.labels, cfg.batch_size, cfg.nSpeakers, seed=cfg.seed)
    crops = TrainCrops(data.paths, data.labels, cfg.max_frames, cfg.seed)
    seed_everything(cfg.seed)
    net = SpeakerNet(cfg.model, cfg.encoder_type, cfg.nOut)
    objective = Objective(cfg.trainfunc, cfg.nOut, data.n_speakers, cfg.global_clf)
    optimizer, _ = make_optimizer(cfg, list(net.parameters()) + list(objective.parameters()))
    net.train()
    for epoch in range(1, epochs + 1):
        crops.set_epoch(epoch)
        batches = sampler.plan(epoch).batches
        for k in range(0, len(batches) - len(batches) % 2, 2):
            losses = []
            for batch in batches[k:k + 2]:
                waves = torch.stack([crops[i][0] for i in batch])
                labels = torch.tensor([crops.labels[i] for i in batch])
                losses.append(forward_batch(net, objective, waves, labels, cfg.batch_size).loss)
            optimizer.zero_grad()
            (sum(losses) / 2).backward()
            optimizer.step()
    params = {f"net.{k}": v.detach() for k, v in net.named_parameters()}
    params.update({f"objective.{k}": v.detach() for k, v in objective.named_parameters()})
    return params


def test_torchrun_two_processes_match_the_single_process_math(corpus, tmp_path):
    torch.set_num_threads(1)
    config, run = _config(corpus), tmp_path / "run"
    first = tmp_path / "first"
    first.mkdir()
    _torchrun(config, run, 1, first)
    assert sorted(os.listdir(run / "model")) == ["model000000001.model"]
    out = tmp_path / "second"
    out.mkdir()
    log = _torchrun(config, run, 2, out)             # resumes from epoch 1 on both ranks
    assert log.count("resumed from") == 1 and log.count("done: epoch 2") == 1   # rank 0 only

    rank0 = torch.load(out / "rank0.pt", weights_only=True)
    rank1 = torch.load(out / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and "objective.global_clf.weight" in rank0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ in {name}"

    initial = torch.load(first / "rank0.pt", weights_only=True)      # after epoch 1
    for name, value in _single_process_reference(config, epochs=1).items():
        torch.testing.assert_close(initial[name], value, rtol=1e-4, atol=1e-5, msg=name)
    reference = _single_process_reference(config, epochs=2)
    ckpt = torch.load(run / "model/model000000002.model", weights_only=True)
    moved = 0
    for name, value in reference.items():
        torch.testing.assert_close(rank0[name], value, rtol=1e-4, atol=1e-5, msg=name)
        moved += not torch.equal(initial[name], value)
        if name.startswith("net."):
            torch.testing.assert_close(ckpt["model"][name[4:]], value, rtol=1e-4, atol=1e-5)
    assert moved > len(reference) // 2, "epoch 2 hardly changed the weights: nothing was compared"

    rows = [json.loads(line) for line in open(run / "result/metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2]
    net = SpeakerNet("ResNetSE34L", "CAP", 16)
    net.load_state_dict(ckpt["model"])
    single = evaluate_list(net, config["test_list"], config["test_path"], 20, 2, progress=False)
    assert rows[1]["EER"] == pytest.approx(single.metrics.eer, abs=1e-9)


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(corpus, tmp_path):
    """SIGTERM to rank 1 alone, paused after its first step: the stop flag is all-reduced
    after every step, so both ranks stop there (rank 0 would otherwise wait forever in the
    next gradient all-reduce); rank 0 writes one interrupted checkpoint holding both ranks'
    positions and totals, and the rerun continues from it to the single-process weights."""
    torch.set_num_threads(1)
    config, run = _config(corpus), tmp_path / "run"
    command, env = _torchrun_command(config, run, 2, tmp_path, fault="pause_after_step:1")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("capsv-fault: paused"):
            os.kill(int(re.search(r"pid (\d+)", line).group(1)), signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    err = "".join(seen) + err
    assert "capsv-fault: paused" in err, out + err
    path = run / "model" / "interrupted000000001.model"
    assert f"interrupted by SIGTERM at epoch 1, step 1 of 1: saved {path}" in err, out + err
    assert sorted(os.listdir(run / "model")) == [path.name]
    saved = torch.load(path, weights_only=True)["position"]
    assert saved["world_size"] == 2 and [r["position"] for r in saved["ranks"]] == [1, 1]

    done = tmp_path / "done"
    done.mkdir()
    log = _torchrun(config, run, 2, done)
    assert f"resumed from {path} (epoch 1, after step 1 of 1" in log
    assert sorted(os.listdir(run / "model")) == ["model000000002.model"]    # 1 superseded
    rank0 = torch.load(done / "rank0.pt", weights_only=True)
    for name, value in _single_process_reference(config, epochs=2).items():
        torch.testing.assert_close(rank0[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_torchrun_evaluation_skips_bad_audio_like_one_process(corpus, tmp_path):
    """--on_bad_audio skip under torchrun: the bad test file and its trials are left out at
    evaluation time, as in one process (it once ran the checks with 'error' and stopped), and
    the EER equals the single-process evaluation of the same checkpoint."""
    torch.set_num_threads(1)
    test = tmp_path / "test"
    shutil.copytree(corpus / "test", test)
    (test / "heldout_bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
    good = (corpus / "trials.txt").read_text().splitlines()
    files = sorted({path for line in good for path in line.split()[1:]})
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(good + [f"1 {files[0]} heldout_bad.wav",
                                         f"0 heldout_bad.wav {files[-1]}"]) + "\n")
    config = dict(_config(corpus), test_list=str(trials), test_path=str(test), test_interval=1,
                  on_bad_audio="skip")
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    log = _torchrun(config, run, 1, out)
    assert "heldout_bad.wav" in log
    rows = [json.loads(line) for line in open(run / "result/metrics.jsonl")]
    ckpt = torch.load(run / "model/model000000001.model", weights_only=True)
    net = SpeakerNet("ResNetSE34L", "CAP", 16)
    net.load_state_dict(ckpt["model"])
    single = evaluate_list(net, str(trials), str(test), 20, 2, progress=False, on_bad_audio="skip")
    assert single.skipped_files == ["heldout_bad.wav"] and single.skipped_trials == 2
    assert rows[0]["EER"] == pytest.approx(single.metrics.eer, abs=1e-9)
    assert ckpt["meta"]["eer"] == pytest.approx(single.metrics.eer, abs=1e-9)


def test_torchrun_with_channels_last_keeps_the_ranks_equal_and_the_math(corpus, tmp_path):
    """--channels_last under DDP: the gradients' buckets are laid out like the parameters, so
    the two ranks must still hold equal weights, and one epoch must match the single-process
    reference up to the rounding that the other layout brings (tests/train/test_precision.py)."""
    torch.set_num_threads(1)
    config, run = {**_config(corpus), "channels_last": True}, tmp_path / "run"
    _torchrun(config, run, 1, tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ in {name}"
    reference = _single_process_reference({**config, "channels_last": False}, epochs=1)
    seed_everything(config["seed"])                 # the weights both runs started from
    initial = SpeakerNet(config["model"], config["encoder_type"], config["nOut"])
    for name, start in initial.named_parameters():
        update = reference[f"net.{name}"] - start.detach()
        error = rank0[f"net.{name}"] - reference[f"net.{name}"]
        # measured: at most 0.8 % of the update (rounding); a wrong gradient would be ~100 %
        assert error.norm() <= 0.05 * update.norm() + 1e-7, name
