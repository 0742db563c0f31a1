"""Equality with the paper's original code on its own checkpoints (spec §6, fixture README)."""
import json

import numpy as np
import pytest
import torch

from capsv.models.checkpoint import load_model
from capsv.evaluation.pipeline import evaluate_list


def _net(reference_dir, encoder):
    net, _ = load_model(str(reference_dir / f"ResNetSE34L_{encoder}.model"), model="ResNetSE34L",
                        encoder_type=encoder)
    return net


def _input(reference_dir, side):
    return torch.from_numpy(np.load(reference_dir / f"debug/input_{side}.npy").astype(np.float32))


def _npy(reference_dir, name):
    return torch.from_numpy(np.load(reference_dir / "debug" / name))


@torch.inference_mode()
def test_tap_frames_and_embeddings(reference_dir):
    net = _net(reference_dir, "TAP")
    frames = net.frames(_input(reference_dir, "A"))
    torch.testing.assert_close(frames, _npy(reference_dir, "ResNetSE34L_TAP.frames_A.npy"), rtol=1e-5, atol=1e-5)
    for side in "AB":
        emb = net.embed(_input(reference_dir, side))
        torch.testing.assert_close(emb, _npy(reference_dir, f"ResNetSE34L_TAP.emb_{side}.npy"),
                                   rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_cap_frames_and_pair_outputs(reference_dir):
    net = _net(reference_dir, "CAP")
    frames_a = net.frames(_input(reference_dir, "A"))
    frames_b = net.frames(_input(reference_dir, "B"))
    torch.testing.assert_close(frames_a, _npy(reference_dir, "ResNetSE34L_CAP.frames_A.npy"), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(frames_b, _npy(reference_dir, "ResNetSE34L_CAP.frames_B.npy"), rtol=1e-5, atol=1e-5)
    e_s, e_q = net.pooling(frames_a, frames_b)       # A = support (path1), B = query (path2)
    torch.testing.assert_close(e_s, _npy(reference_dir, "ResNetSE34L_CAP.cap_ref_A.npy"), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e_q, _npy(reference_dir, "ResNetSE34L_CAP.cap_com_B.npy"), rtol=1e-5, atol=1e-5)


def _reference_scores(reference_dir, encoder):
    rows = [line.split() for line in (reference_dir / f"ResNetSE34L_{encoder}.scores.txt").read_text().splitlines()]
    return [(int(r[0]), r[1], r[2], float(r[3])) for r in rows]


@pytest.mark.parametrize("encoder", ["TAP", "CAP"])
def test_every_trial_score_and_metrics(reference_dir, encoder):
    result = evaluate_list(_net(reference_dir, encoder), str(reference_dir / "trials.txt"),
                           str(reference_dir / "wav"), eval_frames=350, num_eval=10, progress=False)
    expected = _reference_scores(reference_dir, encoder)
    assert [(t.label, t.path1, t.path2) for t in result.trials] == [e[:3] for e in expected]
    diff = np.abs(result.scores - np.array([e[3] for e in expected]))
    assert diff.max() < 1e-5, diff.max()
    ref = json.loads((reference_dir / f"ResNetSE34L_{encoder}.metrics.json").read_text())
    assert result.metrics.eer == pytest.approx(ref["EER"], abs=1e-9)
    assert result.metrics.min_dcf_005 == pytest.approx(ref["minDCF"], abs=1e-9)


def test_batched_cheap_scoring_equals_literal_form(reference_dir):
    """The evaluation engine's batched low-cost CAP equals the literal correlation-tensor form."""
    net = _net(reference_dir, "CAP")
    args = (str(reference_dir / "trials.txt"), str(reference_dir / "wav"))
    cheap = evaluate_list(net, *args, eval_frames=100, num_eval=3, progress=False).scores
    net.pooling.literal = True
    literal = evaluate_list(net, *args, eval_frames=100, num_eval=3, progress=False).scores
    assert np.abs(cheap - literal).max() < 1e-6
