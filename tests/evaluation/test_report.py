"""Evaluation reports: DET geometry, operating points, PNG files, `capsv eval --report`."""
from __future__ import annotations

import json
from statistics import NormalDist

import numpy as np
import pytest
import torch

from capsv import cli
from capsv.evaluation.metrics import compute_eer, compute_metrics, compute_min_dcf
from capsv.evaluation.report import (det_curve, eer_point, min_dcf_point, plot_det, probit, write_comparison,
                          write_report)


def synthetic(shift: float, seed: int, n: int = 600):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n // 6), np.zeros(n)].astype(int)
    return np.r_[rng.normal(shift, 1, n // 6), rng.normal(0, 1, n)], labels


def assert_real_picture(path, min_bytes: int = 15_000):
    """A PNG with actual drawing: big enough, many colours, not one flat image."""
    import matplotlib.image as mpimg
    assert path.stat().st_size > min_bytes
    pixels = mpimg.imread(path)[..., :3]
    assert pixels.shape[0] > 400 and pixels.shape[1] > 400
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50
    assert (pixels.mean(axis=2) < 0.5).mean() > 0.01       # ink: text, axes and curves


def test_det_curve_counts_errors_at_every_threshold():
    scores = np.array([0.9, 0.8, 0.8, 0.4, 0.3, 0.1])
    labels = np.array([1, 0, 1, 1, 0, 0])
    far, frr = det_curve(scores, labels)
    # thresholds 0.9, 0.8 (tie: both accepted), 0.4, 0.3, 0.1
    np.testing.assert_allclose(far, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(frr, [1, 2 / 3, 1 / 3, 0, 0, 0])
    for t, fa, fr in zip([np.inf, 0.9, 0.8, 0.4, 0.3, 0.1], far, frr):
        assert fa == pytest.approx(np.mean(scores[labels == 0] >= t))
        assert fr == pytest.approx(np.mean(scores[labels == 1] < t))


def test_operating_points_agree_with_metrics():
    scores, labels = synthetic(2.0, 0)
    fa, fr = eer_point(scores, labels)
    assert 100 * max(fa, fr) == pytest.approx(compute_eer(scores, labels)[0])
    fa, fr, threshold = min_dcf_point(scores, labels, 0.05)
    value, dcf_threshold = compute_min_dcf(scores, labels, 0.05)
    assert (0.05 * fr + 0.95 * fa) / 0.05 == pytest.approx(value)
    assert threshold == dcf_threshold
    np.testing.assert_allclose(probit([0.5, 0.975]), [0.0, NormalDist().inv_cdf(0.975)])


def test_single_system_report(tmp_path):
    scores, labels = synthetic(2.5, 1)
    paths = write_report(str(tmp_path / "rep"), scores, labels, name="CAP demo")
    assert sorted(p.split("/")[-1] for p in paths.values()) == \
        ["det.png", "metrics.json", "score_hist.png", "scores.txt"]
    assert_real_picture(tmp_path / "rep" / "det.png")
    assert_real_picture(tmp_path / "rep" / "score_hist.png")
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["EER"] == pytest.approx(compute_metrics(scores, labels).eer)
    assert metrics["system"] == "CAP demo"
    lines = (tmp_path / "rep" / "scores.txt").read_text().splitlines()
    assert len(lines) == len(scores) and float(lines[3].split()[1]) == pytest.approx(scores[3], rel=1e-7)


def test_comparison_of_several_systems(tmp_path):
    systems = {"baseline": synthetic(1.5, 2), "TAP": synthetic(2.2, 3), "CAP": synthetic(3.0, 4)}
    paths = write_comparison(str(tmp_path), systems, title="baseline vs TAP vs CAP")
    assert_real_picture(tmp_path / "det_compare.png")
    table = json.loads((tmp_path / "metrics_compare.json").read_text())
    assert list(table) == ["baseline", "TAP", "CAP"]
    assert table["baseline"]["EER"] > table["CAP"]["EER"]
    assert paths["det"].endswith("det_compare.png")
    with pytest.raises(ValueError):
        plot_det({}, str(tmp_path / "none.png"))


def test_cli_eval_report(reference_dir, tmp_path, capsys):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = cli.main(["eval", "--initial_model", str(reference_dir / "ResNetSE34L_TAP.model"),
                         "--model", "ResNetSE34L", "--test_list", str(reference_dir / "trials.txt"),
                         "--test_path", str(reference_dir / "wav"), "--eval_frames", "30",
                         "--num_eval", "2", "--report", str(tmp_path / "report"), "--no_progress",
                         "--nDataLoaderThread", "0", "--device", "cpu"])
    finally:
        torch.set_num_threads(before)
    printed = capsys.readouterr().out
    assert code == 0
    report = tmp_path / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert f"EER {metrics['EER']:.4f}" in printed
    assert metrics["n_trials"] == 30 and metrics["eval_frames"] == 30
    assert len((report / "scores.txt").read_text().splitlines()) == 30
    assert_real_picture(report / "det.png")
    assert_real_picture(report / "score_hist.png", min_bytes=10_000)
