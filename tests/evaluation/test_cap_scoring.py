"""The file-grouped CAP scorer (capsv.evaluation.cap_scoring) against the literal per-trial form."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from capsv.evaluation import cap_scoring
from capsv.evaluation.cap_scoring import GroupedCapScorer, projection_factor
from capsv.evaluation.extract import FileFeatures
from capsv.evaluation.scoring import score_pairs
from capsv.models.pooling import CAP


def _cap(d, e, dtype=torch.float32, gamma=(0.5, 1.5)):
    torch.manual_seed(3)
    cap = CAP(d, e).to(dtype).eval()
    with torch.no_grad():
        cap.att_bn.running_mean.uniform_(-0.5, 0.5)
        cap.att_bn.running_var.uniform_(0.5, 2.0)
        cap.att_bn.weight.uniform_(*gamma)
        cap.att_bn.bias.uniform_(-0.3, 0.3)
    return cap


def _features(cap, n_files, crops, frames, dtype=torch.float32):
    feats = FileFeatures()
    gen = torch.Generator().manual_seed(4)
    d = cap.fc.shape[1]
    with torch.inference_mode():
        for i in range(n_files):
            x = torch.randn(crops, d, frames, generator=gen, dtype=dtype).relu()
            feats.keep_cap(i, x, cap.project(x), n_files)
    return feats


def _literal_score(cap, support, query):
    """One trial through the (Nq, Ns, Tq, Ts) correlation tensor, with the E-dim embeddings."""
    cap.literal = True
    try:
        e_s, e_q = cap(support, query)
    finally:
        cap.literal = False
    return float((F.normalize(e_s, dim=-1) * F.normalize(e_q, dim=-1)).sum(-1).mean())


def _pairs(n_files, n_trials):
    pairs = np.random.default_rng(5).integers(0, n_files, (n_trials, 2))
    pairs[0] = (2, 2)          # a file against itself
    pairs[1] = (3, 4)
    pairs[2] = (4, 3)          # both orders of one pair
    return pairs


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("d, e", [(16, 24), (24, 8)])     # E > D, and E < D (trapezoidal R)
@pytest.mark.parametrize("gamma", [(0.5, 1.5), (-1.0, 1.0)])  # BN scale folded into R, or not
def test_grouped_scores_equal_literal_form(dtype, tol, d, e, gamma, monkeypatch):
    monkeypatch.setattr(cap_scoring, "TRIANGLE_BLOCK", 5)      # several triangle blocks
    cap = _cap(d, e, dtype, gamma)
    feats = _features(cap, n_files=7, crops=3, frames=9, dtype=dtype)
    pairs = _pairs(7, 40)
    # A tiny buffer: several chunks, and files that are in some chunks and not in others.
    scorer = GroupedCapScorer(cap, feats.frames_store, feats.proj_store, buffer_mb=0.01)
    assert scorer.scale_in_r == (gamma[0] > 0)
    assert scorer.chunk < len(pairs) // 3
    with torch.inference_mode():
        got = scorer.score(pairs)
        want = np.array([_literal_score(cap, feats.frames[i], feats.frames[j]) for i, j in pairs])
    assert np.abs(got - want).max() < tol


def test_score_pairs_uses_the_grouped_scorer_and_matches_the_literal_form(monkeypatch):
    cap = _cap(16, 32)
    feats = _features(cap, n_files=5, crops=4, frames=6)
    pairs = _pairs(5, 25)

    class Net:
        pairwise = True
        pooling = cap

    calls = []
    original = GroupedCapScorer.score
    monkeypatch.setattr(GroupedCapScorer, "score",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    with torch.inference_mode():
        got = score_pairs(Net(), feats, pairs, progress=False)
        want = np.array([_literal_score(cap, feats.frames[i], feats.frames[j]) for i, j in pairs])
    assert calls
    assert np.abs(got - want).max() < 1e-5


def test_projection_factor_keeps_norms_and_angles():
    torch.manual_seed(0)
    for e, d in [(512, 128), (8, 24)]:
        fc = torch.randn(e, d, dtype=torch.float64)
        r = projection_factor(fc)
        a = torch.randn(5, d, dtype=torch.float64)
        torch.testing.assert_close(a @ fc.t() @ fc @ a.t(), a @ r.t() @ r @ a.t())
        assert torch.allclose(r.tril(-1), torch.zeros_like(r))     # upper triangular
