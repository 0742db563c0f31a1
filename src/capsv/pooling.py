"""Pooling heads: frame features (B, D, T) -> embeddings (spec §3).

``TAP`` and ``SAP`` are instance-wise: ``forward(x)`` -> (B, E).
``CAP`` is pair-wise: ``forward(support, query)`` -> (e_s, e_q), each (Nq, Ns, E), one
embedding of each side for every (query i, support j) pair. It is computed with the exact
low-cost form of the spec's cost note, never with the (Nq, Ns, Tq, Ts) correlation tensor;
:func:`cap_attention_literal` keeps the literal form as a test oracle.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import Registry

POOLINGS: Registry[nn.Module] = Registry("pooling (--encoder_type)")


@POOLINGS.register("TAP")
class TAP(nn.Module):
    """Temporal average pooling, then Linear(D, E)."""

    pairwise = False

    def __init__(self, in_dim: int, nOut: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, nOut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=2))


@POOLINGS.register("SAP")
class SAP(nn.Module):
    """Self-attentive pooling: softmax_t(tanh(W x_t + b) . a) weighted sum, then Linear(D, E)."""

    pairwise = False

    def __init__(self, in_dim: int, nOut: int):
        super().__init__()
        self.sap_linear = nn.Linear(in_dim, in_dim)
        self.attention = nn.Parameter(torch.empty(in_dim, 1))
        nn.init.xavier_normal_(self.attention)
        self.fc = nn.Linear(in_dim, nOut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)                                          # (B, T, D)
        scores = torch.tanh(self.sap_linear(x)) @ self.attention       # (B, T, 1)
        weights = torch.softmax(scores, dim=1)
        return self.fc((x * weights).sum(dim=1))


def _unit_frames(h: torch.Tensor) -> torch.Tensor:
    """(N, D, T) projections -> unit-norm frames (N, T, D), with F.normalize's epsilon."""
    return F.normalize(h, dim=1).transpose(1, 2)


def cap_attention(hs: torch.Tensor, hq: torch.Tensor, tau: float):
    """Residual CAP attention weights for grouped all-pairs, in O((Tq + Ts) D) per pair.

    hs: (G, Ns, Ts, D) and hq: (G, Nq, Tq, D) unit-norm frames.
    Returns w_q (G, Nq, Ns, Tq) and w_s (G, Nq, Ns, Ts), each softmax + 1.

    With C = hq hs^T: c_s[u] = <mean_t hq_t, hs_u>, a_q[t] = <hq_t, sum_u c_s[u] hs_u>,
    and symmetrically for the support side. Every step is a batched matmul over a
    contiguous layout, so no (Tq, Ts) tensor and few copies are made.
    """
    g, ns, ts, d = hs.shape
    nq, tq = hq.shape[1], hq.shape[2]
    mean_q, mean_s = hq.mean(dim=2), hs.mean(dim=2)                        # (G, Nq, D), (G, Ns, D)
    # support side context c_s[g, j, u, i], then sum_u c_s hs_u -> (G, Nq, Ns, D)
    ctx_s = torch.matmul(hs.reshape(g, ns * ts, d), mean_q.transpose(1, 2)).reshape(g * ns, ts, nq)
    summary_s = torch.matmul(ctx_s.transpose(1, 2), hs.reshape(g * ns, ts, d))
    summary_s = summary_s.reshape(g, ns, nq, d).transpose(1, 2)
    logit_q = torch.matmul(summary_s, hq.transpose(2, 3))                     # (G, Nq, Ns, Tq)
    # query side, mirrored: (G, Ns, Nq, Ts) computed, returned as a (G, Nq, Ns, Ts) view
    ctx_q = torch.matmul(hq.reshape(g, nq * tq, d), mean_s.transpose(1, 2)).reshape(g * nq, tq, ns)
    summary_q = torch.matmul(ctx_q.transpose(1, 2), hq.reshape(g * nq, tq, d))
    summary_q = summary_q.reshape(g, nq, ns, d).transpose(1, 2)
    logit_s = torch.matmul(summary_q, hs.transpose(2, 3)).transpose(1, 2)     # (G, Nq, Ns, Ts)
    return torch.softmax(logit_q / tau, dim=-1) + 1, torch.softmax(logit_s / tau, dim=-1) + 1


def cap_attention_literal(hs: torch.Tensor, hq: torch.Tensor, tau: float):
    """Test oracle: the same weights through the full (G, Nq, Ns, Tq, Ts) correlation tensor."""
    corr = torch.einsum("gitd,gjud->gijtu", hq, hs)
    ctx_s = corr.mean(dim=3)                                             # (G, Nq, Ns, Ts)
    ctx_q = corr.mean(dim=4)                                             # (G, Nq, Ns, Tq)
    logit_q = (corr * ctx_s.unsqueeze(3)).sum(dim=4) / tau
    logit_s = (corr * ctx_q.unsqueeze(4)).sum(dim=3) / tau
    return torch.softmax(logit_q, dim=-1) + 1, torch.softmax(logit_s, dim=-1) + 1


@POOLINGS.register("CAP")
class CAP(nn.Module):
    """Cross attentive pooling (Kye et al., SLT 2021).

    ``forward(support (Ns, D, Ts), query (Nq, D, Tq))`` -> (e_s, e_q), each (Nq, Ns, E).
    ``forward_grouped`` does the same for G independent groups at once (evaluation batches).
    """

    pairwise = True

    def __init__(self, in_dim: int, nOut: int, temperature: float = 0.05, literal: bool = False):
        super().__init__()
        self.temperature = temperature
        self.literal = literal      # the O(Tq Ts) oracle form; only for tests and benchmarks
        self.meta_learner = nn.Sequential(nn.Conv1d(in_dim, in_dim, 1), nn.ReLU())
        self.att_bn = nn.BatchNorm1d(in_dim)
        # The reference leaves this matrix uninitialised (spec §3, defect); we use Xavier.
        self.fc = nn.Parameter(torch.empty(nOut, in_dim))
        nn.init.xavier_uniform_(self.fc)

    def project(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, D, T) backbone frames -> (N, T, D) unit-norm meta-projections."""
        return _unit_frames(self.meta_learner(frames))

    def forward(self, support: torch.Tensor, query: torch.Tensor):
        e_s, e_q = self.forward_grouped(support.unsqueeze(0), query.unsqueeze(0))
        return e_s[0], e_q[0]

    def forward_grouped(self, support: torch.Tensor, query: torch.Tensor,
                        hs: torch.Tensor | None = None, hq: torch.Tensor | None = None):
        """support (G, Ns, D, Ts), query (G, Nq, D, Tq) -> e_s, e_q each (G, Nq, Ns, E).

        ``hs``/``hq`` may carry precomputed :meth:`project` outputs, shaped (G, N, T, D).
        """
        pooled_s, pooled_q = self._pool(support, query, hs, hq)
        return F.linear(pooled_s, self.fc), F.linear(pooled_q, self.fc)

    def score_grouped(self, support: torch.Tensor, query: torch.Tensor,
                      hs: torch.Tensor | None = None, hq: torch.Tensor | None = None) -> torch.Tensor:
        """cos(e_s, e_q) for every pair, (G, Nq, Ns), without forming the embeddings.

        With P the projection and M = P^T P, cos(Pa, Pb) = a^T M b / sqrt(a^T M a b^T M b):
        a D x D product instead of an E x D one per vector.
        """
        a, b = self._pool(support, query, hs, hq)
        gram = self.fc.t() @ self.fc
        a_m, b_m = a @ gram, b @ gram
        dot = (a_m * b).sum(-1)
        norms = ((a_m * a).sum(-1) * (b_m * b).sum(-1)).clamp_min(1e-24).sqrt()
        return dot / norms

    def _pool(self, support, query, hs, hq):
        """Attention-pooled, batch-normalised pair vectors (pooled_s, pooled_q), each (G, Nq, Ns, D)."""
        g, ns, d, ts = support.shape
        nq, tq = query.shape[1], query.shape[3]
        if hs is None:
            hs = self.project(support.reshape(g * ns, d, ts)).reshape(g, ns, ts, d)
        if hq is None:
            hq = self.project(query.reshape(g * nq, d, tq)).reshape(g, nq, tq, d)
        attend = cap_attention_literal if self.literal else cap_attention
        w_q, w_s = attend(hs, hq, self.temperature)
        # Pool the backbone frames, not the projections: p[i,j] = mean_t w[i,j,t] x_t.
        pooled_q = torch.matmul(w_q, query.transpose(2, 3)) / tq                       # (G, Nq, Ns, D)
        pooled_s = torch.matmul(w_s.transpose(1, 2), support.transpose(2, 3)).transpose(1, 2) / ts
        both = torch.cat([pooled_q, pooled_s], dim=0).reshape(-1, d)
        both = F.relu(self.att_bn(both)).reshape(2 * g, nq, ns, d)
        return both[g:], both[:g]
