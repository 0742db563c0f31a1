"""CAP trial scoring: batched low-cost form vs one literal trial per Python iteration.

Part 1: 5,000 trials over 500 files (10 crops x 88 frames each, ResNetSE34L shapes), pairs/s,
for three forms: capsv's scorer (trials grouped by file, capsv.evaluation.cap_scoring), the earlier
per-chunk batched low-cost form (16 trials per call), and the literal baseline, timed on a
subset; the scores must agree with the literal ones within 1e-5 on that subset.
Part 2: the CAP head alone at the paper's training batch (200 supports, 400 queries, 51 frames),
forward + backward, literal vs low-cost form: time and peak memory (each in a fresh process).
"""
from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

from common import Timer, median, peak_rss_mb, row

from capsv.evaluation.extract import FileFeatures

from capsv.evaluation.scoring import _score_cap_stored, score_pairs
from capsv.models.pooling import CAP


def literal_trial_score(cap: CAP, support: torch.Tensor, query: torch.Tensor) -> float:
    """The reference's way: correlation tensor for one trial, then mean pair cosine."""
    h_q = cap.meta_learner(query).permute(0, 2, 1).unsqueeze(1)            # (Nq, 1, Tq, D)
    h_s = cap.meta_learner(support)                                        # (Ns, D, Ts)
    cor_q = torch.matmul(F.normalize(h_q, dim=3), F.normalize(h_s, dim=1))  # (Nq, Ns, Tq, Ts)
    cor_s = cor_q.permute(0, 1, 3, 2)
    att_q = torch.softmax((cor_q * cor_q.mean(dim=2, keepdim=True) / cap.temperature).sum(3), 2) + 1
    att_s = torch.softmax((cor_s * cor_s.mean(dim=2, keepdim=True) / cap.temperature).sum(3), 2) + 1
    feat_q = (query.permute(0, 2, 1).unsqueeze(1) * att_q.unsqueeze(3)).mean(2)
    feat_s = (support.permute(0, 2, 1).unsqueeze(0) * att_s.unsqueeze(3)).mean(2)
    both = torch.cat([feat_q, feat_s]).reshape(-1, feat_q.shape[-1])
    both = F.relu(cap.att_bn(both)).reshape(2, *feat_q.shape)
    e_q, e_s = F.linear(both[0], cap.fc), F.linear(both[1], cap.fc)
    return float((F.normalize(e_s, dim=2) * F.normalize(e_q, dim=2)).sum(2).mean())


class _Net:
    """Just enough of SpeakerNet for score_pairs."""
    pairwise = True

    def __init__(self, cap):
        self.pooling = cap


def scoring(n_files=500, n_trials=5000, n_literal=200, crops=10, frames=88, dim=128, chunk=128,
            repeats=5):
    """Alternating repeats of the three forms on the same features; medians reported, so a
    neighbour's burst of load hits all forms alike."""
    torch.manual_seed(0)
    cap = CAP(dim, 512).eval()
    with torch.no_grad():
        cap.att_bn.running_var.uniform_(0.5, 2)
    feats = FileFeatures()
    with torch.inference_mode():
        for i in range(n_files):
            x = torch.randn(crops, dim, frames).relu()
            feats.keep_cap(i, x, cap.project(x), n_files)
    pairs = np.random.default_rng(0).integers(0, n_files, (n_trials, 2))
    net = _Net(cap)
    score_pairs(net, feats, pairs[:64], progress=False)     # warm-up
    rates = {"grouped": [], "per_chunk": [], "literal": []}
    for _ in range(repeats):
        with Timer() as t:
            fast_scores = score_pairs(net, feats, pairs, progress=False)
        rates["grouped"].append(n_trials / t.seconds)
        with torch.inference_mode(), Timer() as t:
            _score_cap_stored(net, feats, pairs, np.empty(n_trials), min(chunk, 16), _NoBar())
        rates["per_chunk"].append(n_trials / t.seconds)
        with torch.inference_mode(), Timer() as t:
            literal = [literal_trial_score(cap, feats.frames[i], feats.frames[j])
                       for i, j in pairs[:n_literal]]
        rates["literal"].append(n_literal / t.seconds)
    max_diff = float(np.abs(fast_scores[:n_literal] - np.array(literal)).max())
    fast, per_chunk, slow = (median(rates[k]) for k in ("grouped", "per_chunk", "literal"))
    row("cap_scoring", trials=n_trials, files=n_files, repeats=repeats,
        grouped_pairs_per_s=round(fast, 1), per_chunk_batched_pairs_per_s=round(per_chunk, 1),
        literal_pairs_per_s=round(slow, 2), speedup=round(fast / slow, 1),
        speedup_per_chunk=round(per_chunk / slow, 1),
        all_rates={k: [round(r, 1) for r in v] for k, v in rates.items()},
        max_abs_diff=max_diff, agree_1e5=max_diff < 1e-5)


class _NoBar:
    def update(self, n):
        pass


def head_step(form: str, supports=200, queries=400, frames=51, dim=128):
    torch.manual_seed(0)
    cap = CAP(dim, 512, literal=(form == "literal")).train()
    s = torch.randn(supports, dim, frames).relu().requires_grad_()
    q = torch.randn(queries, dim, frames).relu().requires_grad_()
    cap(s[:4], q[:4])                                           # warm-up, small
    base = peak_rss_mb()
    with Timer() as t:
        e_s, e_q = cap(s, q)
        (e_s * e_q).sum().backward()
    row("cap_head_fwd_bwd", form=form, supports=supports, queries=queries, frames=frames,
        seconds=round(t.seconds, 3), peak_rss_mb=round(peak_rss_mb(), 1),
        rss_growth_mb=round(peak_rss_mb() - base, 1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--head", choices=["literal", "cheap"], help="(internal) one head measurement")
    args = parser.parse_args()
    if args.head:
        head_step(args.head)
        sys.exit(0)
    scoring()
    for form in ("cheap", "literal"):   # fresh processes so peak memory is per form
        subprocess.run([sys.executable, __file__, "--head", form], check=True)
