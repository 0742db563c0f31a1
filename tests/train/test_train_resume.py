"""A real run of ``python trainSpeakerNet.py`` killed with SIGKILL mid-epoch, then restarted.

The restarted run must continue from the last checkpoint and end exactly where an
uninterrupted run ends (same weights, optimiser and scheduler state, same LR per epoch), and
every checkpoint left on disk must load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from capsv.models.checkpoint import load_model
from capsv.cli import legacy_main
from capsv.train import train

from speech_like import make_corpus, write_train_list, write_trials

REPO = Path(__file__).resolve().parents[2]

# One line of YAML; the command line below overrides its batch_size (5 -> 6).
CONFIG_LINE = "{model: ResNetSE34L, encoder_type: CAP, nOut: 32, batch_size: 5, test_interval: 2}\n"
FLAGS = ["--trainfunc", "proto", "--global_clf", "--nSpeaker", "2", "--batch_size", "6",
         "--max_frames", "20", "--eval_frames", "0", "--optimizer", "adam", "--lr", "0.002",
         "--max_epoch", "3", "--nDataLoaderThread", "1", "--seed", "3", "--device", "cpu"]


def _flags(root: Path, save_path: Path) -> list[str]:
    return ["--config", str(root / "config.yaml"), *FLAGS,
            "--train_list", str(root / "train.txt"), "--train_path", str(root / "train"),
            "--test_list", str(root / "trials.txt"), "--test_path", str(root / "test"),
            "--save_path", str(save_path)]


def _start(root: Path, save_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "trainSpeakerNet.py", *_flags(root, save_path)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.stdout.read()}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    # 24 speakers x 4 utterances -> 48 groups of 2 -> 8 steps of 6 speakers per epoch.
    write_train_list(str(root / "train.txt"), make_corpus(str(root / "train"), 24, 4,
                                                          seconds=(0.4, 0.8), seed=7))
    write_trials(str(root / "trials.txt"), make_corpus(str(root / "test"), 3, 2, seconds=(0.5, 0.8),
                                                       seed=8, prefix="heldout"))
    (root / "config.yaml").write_text(CONFIG_LINE)

    killed = root / "killed"
    proc = _start(root, killed)
    _wait_for(killed / "model" / "model000000001.model", proc)
    time.sleep(0.3)                                   # well inside epoch 2 (8 steps)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first_output = proc.stdout.read()
    epoch2_existed = (killed / "model" / "model000000002.model").exists()

    proc = _start(root, killed)                       # the very same command again
    second_output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, second_output

    before = torch.get_num_threads()
    torch.set_num_threads(1)                          # the same arithmetic as the subprocesses
    try:
        cfg = yaml.safe_load(CONFIG_LINE)
        cfg.update(trainfunc="proto", global_clf=True, nSpeakers=2, batch_size=6, max_frames=20,
                   eval_frames=0, optimizer="adam", lr=0.002, max_epoch=3, nDataLoaderThread=0,
                   seed=3, device="cpu", no_progress=True,
                   train_list=str(root / "train.txt"), train_path=str(root / "train"),
                   test_list=str(root / "trials.txt"), test_path=str(root / "test"),
                   save_path=str(root / "straight"))
        straight = train(cfg)
    finally:
        torch.set_num_threads(before)
    return dict(root=root, killed=killed, straight=Path(straight.save_path),
                first_output=first_output, second_output=second_output,
                epoch2_existed=epoch2_existed)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_the_kill_landed_mid_epoch(runs):
    assert not runs["epoch2_existed"], "epoch 2 finished before the kill; the test lost its point"
    assert "IT 1," in runs["first_output"] and "IT 2," not in runs["first_output"]


def test_restart_continues_from_the_last_checkpoint(runs):
    out = runs["second_output"]
    assert "resumed from" in out and "model000000001.model (epoch 1" in out
    assert "IT 1," not in out and "IT 2," in out and "IT 3," in out
    rows = [json.loads(line) for line in open(runs["killed"] / "result" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_resumed_run_ends_exactly_like_an_uninterrupted_one(runs):
    resumed = _load(runs["killed"] / "model" / "model000000003.model")
    straight = _load(runs["straight"] / "model" / "model000000003.model")
    assert resumed["meta"]["epoch"] == straight["meta"]["epoch"] == 3
    for name, tensor in straight["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    for name, tensor in straight["loss"].items():
        assert torch.equal(resumed["loss"][name], tensor), name
    for index, state in straight["optimizer"]["state"].items():      # Adam moments and steps
        for key, value in state.items():
            assert torch.equal(resumed["optimizer"]["state"][index][key], value), (index, key)
    assert resumed["optimizer"]["param_groups"][0]["lr"] == straight["optimizer"]["param_groups"][0]["lr"]
    assert resumed["scheduler"] == straight["scheduler"]
    lrs = lambda run: [json.loads(l)["lr"] for l in open(run / "result" / "metrics.jsonl")]  # noqa: E731,E741
    assert lrs(runs["killed"]) == lrs(runs["straight"])


def test_every_checkpoint_on_disk_loads_and_no_temp_files_remain(runs):
    folder = runs["killed"] / "model"
    names = sorted(os.listdir(folder))
    # Epoch 1 was superseded (not a multiple of test_interval 2); 2 (evaluated) and 3 stay.
    assert names == ["model000000002.model", "model000000003.model"]
    for name in names:
        ckpt = _load(folder / name)
        assert ckpt["format"] == "capsv" and {"optimizer", "scheduler", "loss", "rng"} <= set(ckpt)
        net, _ = load_model(str(folder / name))
        assert net.config == {"model": "ResNetSE34L", "encoder_type": "CAP", "nOut": 32}
        assert "eer_threshold" in ckpt["meta"] and ckpt["meta"]["train_list_sha256"]
    assert not [n for n in os.listdir(runs["killed"] / "result") if n.endswith(".tmp")]


def test_yaml_line_and_command_line_override_reached_the_run(runs):
    config = _load(runs["killed"] / "model" / "model000000003.model")["train_config"]
    assert config["nOut"] == 32 and config["encoder_type"] == "CAP"     # from the YAML line
    assert config["batch_size"] == 6                                    # typed flag wins
    assert config["nSpeakers"] == 2 and config["global_clf"] is True    # --nSpeaker alias


def test_legacy_eval_with_the_training_command(runs, capsys):
    """``python trainSpeakerNet.py --eval <the training flags>`` evaluates the run's newest
    checkpoint, like the original."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = legacy_main(["--eval", *_flags(runs["root"], runs["killed"])])
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert code == 0, out
    eer = float(out.split("EER ")[1].split()[0])
    meta = _load(runs["killed"] / "model" / "model000000003.model")["meta"]
    assert eer == pytest.approx(meta["eer"], abs=1e-3)
