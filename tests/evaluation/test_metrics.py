import numpy as np
import pytest
from sklearn.metrics import roc_curve

from capsv.evaluation.metrics import MetricError, compute_eer, compute_metrics, compute_min_dcf, roc_points


def _random_scores(seed, n=400, ties=True):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = rng.normal(labels * 1.2, 1.0)
    if ties:
        scores = np.round(scores, 1)       # many exact ties
    return scores, labels


def _sklearn_eer(scores, labels):
    fpr, tpr, _ = roc_curve(labels, scores, pos_label=1)
    fnr = 1 - tpr
    i = np.nanargmin(np.abs(fnr - fpr))
    return 100 * max(fpr[i], fnr[i])


def _loop_min_dcf(scores, labels, p):
    order = sorted(range(len(scores)), key=lambda i: scores[i])   # stable
    n_t = sum(labels)
    n_n = len(labels) - n_t
    misses = false_alarms_kept = 0
    best = float("inf")
    for i in order:
        misses += labels[i]
        false_alarms_kept += 1 - labels[i]
        c = p * misses / n_t + (1 - p) * (1 - false_alarms_kept / n_n)
        best = min(best, c)
    return best / min(p, 1 - p)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [True, False])
def test_roc_and_eer_equal_sklearn(seed, ties):
    scores, labels = _random_scores(seed, ties=ties)
    fpr, tpr, thr = roc_points(scores, labels)
    s_fpr, s_tpr, s_thr = roc_curve(labels, scores)
    np.testing.assert_allclose(fpr, s_fpr)
    np.testing.assert_allclose(tpr, s_tpr)
    np.testing.assert_allclose(thr[1:], s_thr[1:])
    assert compute_eer(scores, labels)[0] == pytest.approx(_sklearn_eer(scores, labels), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p", [0.05, 0.01])
def test_min_dcf_equals_direct_loop(seed, p):
    scores, labels = _random_scores(seed)
    assert compute_min_dcf(scores, labels, p)[0] == pytest.approx(
        _loop_min_dcf(list(scores), list(labels), p), abs=1e-12)


def test_perfect_and_inverted_systems():
    labels = np.array([1, 1, 0, 0])
    assert compute_eer(np.array([0.9, 0.8, 0.1, 0.2]), labels)[0] == 0.0
    assert compute_eer(np.array([0.1, 0.2, 0.9, 0.8]), labels)[0] == 100.0
    assert compute_min_dcf(np.array([0.9, 0.8, 0.1, 0.2]), labels)[0] == 0.0


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_single_class_lists_are_rejected(labels):
    with pytest.raises(MetricError, match="need both"):
        compute_metrics([0.1, 0.2, 0.3], labels)


def test_nan_scores_are_rejected():
    with pytest.raises(MetricError, match="NaN"):
        compute_eer([0.1, float("nan")], [0, 1])
