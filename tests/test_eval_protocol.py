"""The evaluation protocol travels with the threshold: a model evaluated during training at
``--eval_frames 200`` is verified at 200 frames (API, ``capsv verify``, export), and a
checkpoint written before the protocol was stored falls back to the paper's 10 x 350."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from capsv.api import SpeakerVerifier
from capsv.cli import main as cli_main
from capsv.data.lists import read_trials
from capsv.evaluation.pipeline import evaluate_list
from capsv.models.checkpoint import load_model, save_checkpoint
from capsv.protocol import EVAL_FRAMES, META_KEY, NUM_EVAL, EvalProtocol, protocol_of
from capsv.train import train

from speech_like import make_corpus, write_train_list, write_trials

FRAMES, CROPS = 200, 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of a tiny TAP model, evaluated at 3 crops x 200 frames. The test files
    (2.5-3 s) hold a 200-frame crop whole but not a 350-frame one, so the two protocols
    give different scores."""
    root = tmp_path_factory.mktemp("protocol")
    write_train_list(str(root / "train.txt"),
                     make_corpus(str(root / "train"), 6, 3, seconds=(0.3, 0.6), seed=5))
    write_trials(str(root / "trials.txt"),
                 make_corpus(str(root / "test"), 3, 2, seconds=(2.5, 3.0), seed=6, prefix="test"))
    torch.manual_seed(0)
    summary = train(dict(
        model="ResNetSE34L", encoder_type="TAP", nOut=16, trainfunc="proto", nSpeakers=2,
        batch_size=3, max_frames=10, max_epoch=1, train_list=str(root / "train.txt"),
        train_path=str(root / "train"), test_list=str(root / "trials.txt"),
        test_path=str(root / "test"), eval_frames=FRAMES, num_eval=CROPS,
        save_path=str(root / "run"), nDataLoaderThread=0, no_progress=True, seed=0))
    return root, summary


def _trial_pairs(root):
    trials = read_trials(str(root / "trials.txt"))
    return [(str(root / "test" / t.path1), str(root / "test" / t.path2)) for t in trials]


def test_trainer_stores_the_protocol_beside_the_threshold(trained):
    _, summary = trained
    meta = torch.load(summary.checkpoint, weights_only=True)["meta"]
    assert meta[META_KEY] == {"eval_frames": FRAMES, "num_eval": CROPS}
    assert meta["eer_threshold"] == pytest.approx(summary.metrics["EER_threshold"])


def test_api_verifies_at_the_stored_protocol_with_the_stored_threshold(trained):
    root, summary = trained
    verifier = SpeakerVerifier.from_checkpoint(summary.checkpoint, device="cpu")
    assert (verifier.eval_frames, verifier.num_eval) == (FRAMES, CROPS)
    assert verifier.threshold == pytest.approx(summary.metrics["EER_threshold"])
    net, _ = load_model(summary.checkpoint, device="cpu")
    at_200 = evaluate_list(net, str(root / "trials.txt"), str(root / "test"), FRAMES, CROPS,
                           progress=False).scores
    at_350 = evaluate_list(net, str(root / "trials.txt"), str(root / "test"), progress=False).scores
    assert not np.allclose(at_200, at_350, atol=1e-4)          # the protocol matters here
    np.testing.assert_allclose(verifier.score_pairs(_trial_pairs(root)), at_200, atol=1e-5)
    explicit = SpeakerVerifier.from_checkpoint(summary.checkpoint, device="cpu", eval_frames=0)
    assert (explicit.eval_frames, explicit.num_eval) == (0, CROPS)   # an explicit value wins


def test_cli_verify_uses_the_stored_protocol(trained, capsys):
    root, summary = trained
    a, b = _trial_pairs(root)[0]
    expected = SpeakerVerifier.from_checkpoint(summary.checkpoint, device="cpu").score(a, b)
    assert cli_main(["verify", a, b, "--initial_model", summary.checkpoint, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"score {expected:.8f}" in out
    assert f"threshold {summary.metrics['EER_threshold']:.6g}" in out


def test_export_writes_the_stored_protocol(trained, tmp_path):
    _, summary = trained
    assert cli_main(["export", "--format", "torchscript", "--no_check", "--initial_model",
                     summary.checkpoint, "--out", str(tmp_path / "ts")]) == 0
    manifest = json.loads((tmp_path / "ts" / "export.json").read_text())
    assert manifest["recipe"]["eval_frames"] == FRAMES
    assert manifest["recipe"]["num_crops"] == CROPS
    assert manifest["eer_threshold"] == pytest.approx(summary.metrics["EER_threshold"])


def test_old_checkpoint_without_protocol_falls_back_to_the_paper_with_a_note(trained, tmp_path,
                                                                             caplog):
    _, summary = trained
    ckpt = torch.load(summary.checkpoint, weights_only=True)
    meta = {k: v for k, v in ckpt["meta"].items() if k != META_KEY}
    net, _ = load_model(summary.checkpoint, device="cpu")
    old = str(tmp_path / "old.model")
    save_checkpoint(old, net, meta)
    with caplog.at_level(logging.INFO, logger="capsv.protocol"):
        verifier = SpeakerVerifier.from_checkpoint(old, device="cpu")
    assert (verifier.eval_frames, verifier.num_eval) == (EVAL_FRAMES, NUM_EVAL)
    assert "no evaluation protocol stored" in caplog.text and "old.model" in caplog.text


@pytest.mark.parametrize("value", [None, {}, {"eval_frames": "200", "num_eval": 3},
                                   {"eval_frames": 200, "num_eval": 0}, [200, 3]])
def test_a_missing_or_malformed_stored_protocol_reads_as_the_paper(value):
    meta = {} if value is None else {META_KEY: value}
    assert protocol_of(meta) == EvalProtocol(EVAL_FRAMES, NUM_EVAL)
    assert protocol_of({META_KEY: {"eval_frames": 0, "num_eval": 1}}) == EvalProtocol(0, 1)
