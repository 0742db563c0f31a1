"""Adaptive s-norm: the formula, a synthetic set where it helps, and the eval/score plumbing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from capsv import cli
from capsv.api import SpeakerVerifier
from capsv.evaluation.metrics import compute_eer
from capsv.evaluation.scorenorm import ScoreNormError, adaptive_snorm, asnorm_scores, cohort_stats


pytestmark = pytest.mark.usefixtures("one_thread")


def top_stats(row, top_n: int) -> tuple[float, float]:
    """Mean and population std of the top_n finite values, written out."""
    row = sorted((float(v) for v in row if np.isfinite(v)), reverse=True)[:top_n]
    mean = sum(row) / len(row)
    return mean, (sum((v - mean) ** 2 for v in row) / len(row)) ** 0.5


def asnorm_by_hand(score: float, enroll_cohort, test_cohort, top_n: int) -> float:
    """The formula written out for one trial, -inf entries (excluded files) dropped."""
    me, se = top_stats(enroll_cohort, top_n)
    mt, st = top_stats(test_cohort, top_n)
    return 0.5 * ((score - me) / se + (score - mt) / st)


def synthetic_set(seed: int = 7):
    """Unit embeddings whose scores are inflated by a per-utterance 'channel' offset,
    the kind of miscalibration that cohort normalisation removes."""
    rng = np.random.default_rng(seed)
    dim, n_spk, per = 24, 30, 6
    centers = rng.normal(size=(n_spk + 40, dim))
    channel = rng.normal(size=dim)
    channel /= np.linalg.norm(channel)

    def utterance(s):
        return centers[s] + 0.9 * rng.normal(size=dim) + rng.uniform(0, 4) * channel * np.sqrt(dim) / 2

    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    emb = unit(np.array([utterance(s) for s in range(n_spk) for _ in range(per)]))
    cohort = unit(np.array([utterance(n_spk + k % 40) for k in range(200)]))
    speaker = np.repeat(np.arange(n_spk), per)
    i, j = np.triu_indices(len(emb), 1)
    return (emb[i] * emb[j]).sum(1), (speaker[i] == speaker[j]).astype(int), emb @ cohort.T, i, j


def test_asnorm_matches_the_formula_and_lowers_eer():
    scores, labels, table, i, j = synthetic_set()
    top_n = 50
    normed = asnorm_scores(scores, table[i], table[j], top_n)
    rows = np.random.default_rng(0).choice(len(scores), 200, replace=False)
    by_hand = [asnorm_by_hand(scores[r], table[i[r]], table[j[r]], top_n) for r in rows]
    np.testing.assert_allclose(normed[rows], by_hand, rtol=1e-10, atol=1e-10)
    raw_eer, norm_eer = compute_eer(scores, labels)[0], compute_eer(normed, labels)[0]
    assert norm_eer <= raw_eer
    assert norm_eer < 0.7 * raw_eer, (raw_eer, norm_eer)    # on this set it clearly helps


def test_cohort_stats_edge_cases():
    table = np.array([[0.1, 0.9, 0.5, -np.inf], [0.3, 0.2, -np.inf, 0.4]])
    mean, std = cohort_stats(table, top_n=2)
    np.testing.assert_allclose(mean, [0.7, 0.35])
    np.testing.assert_allclose(std, [0.2, 0.05])
    mean, _ = cohort_stats(table, top_n=99)                # more than usable: all finite ones
    np.testing.assert_allclose(mean, [0.5, 0.3])
    _, std = cohort_stats(np.ones((1, 3)), 3)
    assert std[0] > 0                                      # floored, no division by zero
    with pytest.raises(ScoreNormError):
        cohort_stats(np.full((1, 2), -np.inf), 1)
    with pytest.raises(ScoreNormError):
        cohort_stats(table, 0)
    np.testing.assert_allclose(adaptive_snorm([1.0], 0.5, 0.25, 0.0, 0.5), [0.5 * (2.0 + 2.0)])


TRIALS = ["1 id10002/vidA/00001.wav id10002/vidB/00002.wav",
          "0 id10002/vidA/00001.wav id10003/vidA/00001.wav",
          "1 id10003/vidA/00002.wav id10003/vidC/00003.wav",
          "0 id10002/vidB/00003.wav id10003/vidC/00003.wav"]
# id10001/id10004 files, plus one trial file (it must be left out of its own cohort)
COHORT = ["id10001/vidA/00001.wav", "id10001/vidA/00002.wav", "id10001/vidB/00003.wav",
          "id10004/vidA/00001.wav", "id10004/vidB/00002.wav", "id10004/vidB/00003.wav",
          "id10003/vidA/00001.wav"]
PROTOCOL = ["--eval_frames", "40", "--num_eval", "2"]


@pytest.mark.parametrize("encoder", ["TAP", "CAP"])
def test_cli_eval_asnorm_equals_formula_on_api_scores(reference_dir, tmp_path, capsys, encoder):
    wav = reference_dir / "wav"
    (tmp_path / "trials.txt").write_text("\n".join(TRIALS) + "\n")
    (tmp_path / "cohort.txt").write_text("\n".join(COHORT) + "\n")
    ckpt = reference_dir / f"ResNetSE34L_{encoder}.model"
    code = cli.main(["eval", "--initial_model", str(ckpt), "--model", "ResNetSE34L",
                     "--test_list", str(tmp_path / "trials.txt"), "--test_path", str(wav),
                     *PROTOCOL, "--score_norm", "asnorm", "--cohort_list", str(tmp_path / "cohort.txt"),
                     "--top_n", "4", "--save_scores", str(tmp_path / "norm.txt"), "--no_progress",
                     "--nDataLoaderThread", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("raw scores: EER") and "\nEER " in out
    got = [float(l.split()[3]) for l in (tmp_path / "norm.txt").read_text().splitlines()]

    sv = SpeakerVerifier.from_checkpoint(ckpt, model="ResNetSE34L", eval_frames=40, num_eval=2)
    files = sorted({f for line in TRIALS for f in line.split()[1:]})
    # every raw score the formula needs, in one batched call; CAP: the file is the support
    pairs = [tuple(line.split()[1:]) for line in TRIALS] + [(f, c) for f in files for c in COHORT]
    raw = dict(zip(pairs, sv.score_pairs([(wav / a, wav / b) for a, b in pairs])))
    side = lambda f: [raw[(f, c)] if c != f else -np.inf for c in COHORT]
    expected, smallest_std = [], np.inf
    for line in TRIALS:
        _, a, b = line.split()
        expected.append(asnorm_by_hand(raw[(a, b)], side(a), side(b), top_n=4))
        smallest_std = min(smallest_std, top_stats(side(a), 4)[1], top_stats(side(b), 4)[1])
    # The random-weight fixture models score everything near 0.9x, so the cohort std is tiny
    # and s-norm magnifies float32 rounding (1e-7 on a raw score) by 1/std.
    np.testing.assert_allclose(got, expected, rtol=0, atol=5e-7 / smallest_std)
    assert 5e-7 / smallest_std < 0.05 * np.ptp(expected)    # the check still tells trials apart


def test_cli_score_asnorm_equals_eval_asnorm(reference_dir, tmp_path, capsys):
    wav = reference_dir / "wav"
    (tmp_path / "trials.txt").write_text("\n".join(TRIALS) + "\n")
    (tmp_path / "cohort.txt").write_text("\n".join(COHORT) + "\n")
    common = ["--initial_model", str(reference_dir / "ResNetSE34L_TAP.model"), "--model",
              "ResNetSE34L", *PROTOCOL, "--no_progress", "--nDataLoaderThread", "0", "--device", "cpu"]
    norm = ["--score_norm", "asnorm", "--top_n", "4"]
    assert cli.main(["eval", "--test_list", str(tmp_path / "trials.txt"), "--test_path", str(wav),
                     "--cohort_list", str(tmp_path / "cohort.txt"), *norm,
                     "--save_scores", str(tmp_path / "eval.txt"), *common]) == 0
    assert cli.main(["embed", "--test_list", str(tmp_path / "trials.txt"), "--test_path", str(wav),
                     "--out", str(tmp_path / "emb.npz"), *common]) == 0
    assert cli.main(["embed", "--test_list", str(tmp_path / "cohort.txt"), "--test_path", str(wav),
                     "--out", str(tmp_path / "cohort.npz"), *common]) == 0
    assert cli.main(["score", "--embeddings", str(tmp_path / "emb.npz"), "--test_list",
                     str(tmp_path / "trials.txt"), "--cohort_embeddings", str(tmp_path / "cohort.npz"),
                     *norm, "--save_scores", str(tmp_path / "score.txt")]) == 0
    capsys.readouterr()
    read = lambda p: [float(l.split()[3]) for l in p.read_text().splitlines()]
    with np.load(tmp_path / "emb.npz") as e, np.load(tmp_path / "cohort.npz") as c:
        table = e["embeddings"].astype(np.float64) @ c["embeddings"].astype(np.float64).T
        table[list(e["keys"]).index(COHORT[-1]), -1] = -np.inf
    smallest_std = cohort_stats(table, 4)[1].min()
    # float32 rounding of the raw scores, magnified by 1/std (see the test above)
    np.testing.assert_allclose(read(tmp_path / "score.txt"), read(tmp_path / "eval.txt"),
                               rtol=0, atol=5e-7 / smallest_std)


def test_asnorm_without_cohort_is_a_clear_error(reference_dir, tmp_path, capsys):
    (tmp_path / "trials.txt").write_text("\n".join(TRIALS) + "\n")
    code = cli.main(["eval", "--initial_model", str(reference_dir / "ResNetSE34L_TAP.model"),
                     "--model", "ResNetSE34L", "--test_list", str(tmp_path / "trials.txt"),
                     "--test_path", str(reference_dir / "wav"), "--score_norm", "asnorm"])
    err = capsys.readouterr().err
    assert code == 2 and "--cohort_list" in err and len(err.strip().splitlines()) == 1
