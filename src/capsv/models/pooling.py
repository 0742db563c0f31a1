"""Pooling heads: frame features (B, D, T) -> embeddings (spec §3).

``TAP`` and ``SAP`` are instance-wise: ``forward(x)`` -> (B, E).
``CAP`` is pair-wise: ``forward(support, query)`` -> (e_s, e_q), each (Nq, Ns, E), one
embedding of each side for every (query i, support j) pair. It is computed with the exact
low-cost form of the spec's cost note, never with the (Nq, Ns, Tq, Ts) correlation tensor;
:func:`cap_attention_literal` keeps the literal form as a test oracle.

CAP in the paper's steps (spec §3) and where each lives:
meta-projection (``CAP.project``) -> correlation of the projected frames -> context vectors
(each side's agreement with the whole other side) -> attention logits -> residual attention
weights (softmax + 1) -> pooling of the *backbone* frames -> BatchNorm + ReLU -> projection.
The correlation-to-weights steps exist in four forms, all the same function:

- :func:`cap_attention`: the low-cost form (training, fixed-size evaluation crops);
- :func:`cap_attention_masked`: the same over padded frames (whole-utterance scoring);
- :func:`cap_attention_literal`: the literal (Tq, Ts) correlation tensor (test oracle);
- :class:`capsv.evaluation.cap_scoring.GroupedCapScorer`: evaluation's trials grouped by file
  into large matmuls, with BatchNorm folded into an affine map (eval mode only).

Masks (full-length scoring). Every head takes optional boolean frame masks, True on real
frames, so utterances of different lengths can share one padded batch: (B, T) for TAP/SAP,
(G, N, T) per side for CAP. A masked item gives the same result as the unpadded item alone
(to float rounding); without a mask the original code runs unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry

POOLINGS: Registry[nn.Module] = Registry("pooling (--encoder_type)")


class EmbeddingHead(nn.Module):
    """A head with one embedding per crop (TAP, SAP), and its answers to evaluation's two
    questions (spec §5): what to keep of a file (:meth:`keep`), and how two kept files score
    (:meth:`score_kept`). Evaluation asks every head the same questions, so it never needs to
    know which head it holds; ``kept`` names what a file's disk store holds."""

    pairwise = False
    kept = ("emb",)

    def keep(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """A file's crops' backbone frames (crops, D, T) -> ``emb`` (E,), the mean of the
        crops' unit-norm embeddings (all scoring needs), and ``crops`` (crops, E), those
        unit-norm embeddings."""
        crops = F.normalize(self(frames), dim=-1)
        return {"emb": crops.mean(dim=0), "crops": crops}

    def score_kept(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Kept files ``emb`` (N, E) of each side -> (N,) scores: the dot product of the means,
        which is the mean of the crops' cosine matrix."""
        return (a["emb"] * b["emb"]).sum(dim=-1)


@POOLINGS.register("TAP")
class TAP(EmbeddingHead):
    """Temporal average pooling, then Linear(D, E)."""

    def __init__(self, in_dim: int, nOut: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, nOut)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, D, T), mask (B, T) or None -> (B, E)."""
        if mask is None:
            return self.fc(x.mean(dim=2))
        return self.fc(masked_mean(x, mask.unsqueeze(1), dim=2))


@POOLINGS.register("SAP")
class SAP(EmbeddingHead):
    """Self-attentive pooling: softmax_t(tanh(W x_t + b) . a) weighted sum, then Linear(D, E)."""

    def __init__(self, in_dim: int, nOut: int):
        super().__init__()
        self.sap_linear = nn.Linear(in_dim, in_dim)
        self.attention = nn.Parameter(torch.empty(in_dim, 1))
        nn.init.xavier_normal_(self.attention)
        self.fc = nn.Linear(in_dim, nOut)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, D, T), mask (B, T) or None -> (B, E)."""
        x = x.transpose(1, 2)                                          # (B, T, D)
        scores = torch.tanh(self.sap_linear(x)) @ self.attention       # (B, T, 1)
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return self.fc((x * weights).sum(dim=1))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` counting only positions where the (broadcastable) mask is True."""
    mask = mask.to(x.dtype)
    return (x * mask).sum(dim=dim) / mask.sum(dim=dim)


def lengths_to_mask(lengths, max_len: int | None = None) -> torch.Tensor:
    """Frame counts (B,) -> boolean mask (B, max_len), True on the first ``lengths[b]`` frames."""
    lengths = torch.as_tensor(lengths)
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)


def pad_frames(frames: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame features [(..., D, T_i)] -> zero-padded (B, ..., D, T_max) and mask (B, ..., T_max)."""
    lengths = [f.shape[-1] for f in frames]
    t_max = max(lengths)
    padded = torch.stack([F.pad(f, (0, t_max - f.shape[-1])) for f in frames])
    mask = lengths_to_mask(torch.tensor(lengths, device=padded.device), t_max)
    mask = mask.reshape((len(frames),) + (1,) * (padded.dim() - 3) + (t_max,))
    return padded, mask.expand(padded.shape[:-2] + (t_max,))


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
    # No reshapes on Python ints, so traced exports keep every size dynamic.
    # Correlation, never formed: C[t, u] = <hq_t, hs_u> (unit frames: the cosine); its means
    # over one side are dot products with that side's mean frame.
    mean_q, mean_s = hq.mean(dim=2), hs.mean(dim=2)                        # (G, Nq, D), (G, Ns, D)
    # Context vector of the support side: c_s[u] = mean_t C[t, u] = <mean_t hq_t, hs_u>,
    # (G, Ns, Ts, Nq); then sum_u c_s[u] hs_u -> (G, Ns, Nq, D)
    ctx_s = torch.matmul(hs, mean_q.transpose(1, 2).unsqueeze(1))
    summary_s = torch.matmul(ctx_s.transpose(2, 3), hs)
    # Attention logits of the query side: a_q[t] = sum_u C[t, u] c_s[u] = <hq_t, summary_s>
    logit_q = torch.matmul(summary_s.transpose(1, 2), hq.transpose(2, 3))     # (G, Nq, Ns, Tq)
    # query side, mirrored: context c_q (G, Nq, Tq, Ns) -> (G, Nq, Ns, D) -> logits (G, Ns, Nq, Ts)
    ctx_q = torch.matmul(hq, mean_s.transpose(1, 2).unsqueeze(1))
    summary_q = torch.matmul(ctx_q.transpose(2, 3), hq)
    logit_s = torch.matmul(summary_q.transpose(1, 2), hs.transpose(2, 3)).transpose(1, 2)
    # Residual attention: softmax over frames + 1, so every frame keeps at least weight 1.
    return torch.softmax(logit_q / tau, dim=-1) + 1, torch.softmax(logit_s / tau, dim=-1) + 1


def cap_attention_masked(hs: torch.Tensor, hq: torch.Tensor, tau: float,
                         mask_s: torch.Tensor, mask_q: torch.Tensor):
    """:func:`cap_attention` over padded frames; masks (G, Ns, Ts) and (G, Nq, Tq), True = real.

    Padded frames are zeroed so they add nothing to the context sums, get -inf logits, and
    get weight 0 instead of softmax + 1.
    """
    fs, fq = mask_s.to(hs.dtype), mask_q.to(hq.dtype)
    hs, hq = hs * fs.unsqueeze(-1), hq * fq.unsqueeze(-1)
    mean_q = hq.sum(dim=2) / fq.sum(dim=2, keepdim=True)                # (G, Nq, D)
    mean_s = hs.sum(dim=2) / fs.sum(dim=2, keepdim=True)                # (G, Ns, D)
    ctx_s = torch.einsum("gjud,gid->giju", hs, mean_q)
    ctx_q = torch.einsum("gitd,gjd->gijt", hq, mean_s)
    summary_s = torch.einsum("giju,gjud->gijd", ctx_s, hs)
    summary_q = torch.einsum("gijt,gitd->gijd", ctx_q, hq)
    logit_q = torch.einsum("gitd,gijd->gijt", hq, summary_s) / tau
    logit_s = torch.einsum("gjud,gijd->giju", hs, summary_q) / tau
    keep_q = mask_q.unsqueeze(2)                                         # (G, Nq, 1, Tq)
    keep_s = mask_s.unsqueeze(1)                                         # (G, 1, Ns, Ts)
    w_q = (torch.softmax(logit_q.masked_fill(~keep_q, float("-inf")), dim=-1) + 1) * keep_q
    w_s = (torch.softmax(logit_s.masked_fill(~keep_s, float("-inf")), dim=-1) + 1) * keep_s
    return w_q, w_s


def cap_attention_literal(hs: torch.Tensor, hq: torch.Tensor, tau: float):
    """Test oracle: the same weights through the full (G, Nq, Ns, Tq, Ts) correlation tensor,
    step by step as the paper writes them."""
    corr = torch.einsum("gitd,gjud->gijtu", hq, hs)                      # correlation C
    ctx_s = corr.mean(dim=3)                                             # context c_s (G, Nq, Ns, Ts)
    ctx_q = corr.mean(dim=4)                                             # context c_q (G, Nq, Ns, Tq)
    logit_q = (corr * ctx_s.unsqueeze(3)).sum(dim=4) / tau               # attention logits
    logit_s = (corr * ctx_q.unsqueeze(4)).sum(dim=3) / tau
    return torch.softmax(logit_q, dim=-1) + 1, torch.softmax(logit_s, dim=-1) + 1   # residual


@POOLINGS.register("CAP")
class CAP(nn.Module):
    """Cross attentive pooling (Kye et al., SLT 2021).

    ``forward(support (Ns, D, Ts), query (Nq, D, Tq))`` -> (e_s, e_q), each (Nq, Ns, E).
    ``forward_grouped`` does the same for G independent groups at once (evaluation batches).
    Optional ``support_mask`` / ``query_mask`` (True on real frames) let padded batches of
    different lengths share one call.
    """

    pairwise = True
    kept = ("frames", "proj")      # evaluation keeps these of a file (see EmbeddingHead)

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
        """Meta-projection (step 1): (N, D, T) backbone frames -> (N, T, D) unit-norm
        projected frames, whose dot products are the correlation's cosines."""
        return _unit_frames(self.meta_learner(frames))

    def keep(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Evaluation, per file: CAP has no single-file embedding (its pooling depends on the
        other side), so a file keeps its crops' backbone ``frames`` (crops, D, T) and their
        meta-projections ``proj`` (crops, T, D), computed once per file."""
        return {"frames": frames, "proj": self.project(frames)}

    def score_kept(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                   mask_a: torch.Tensor | None = None,
                   mask_b: torch.Tensor | None = None) -> torch.Tensor:
        """Kept files of G pairs, ``a`` as support and ``b`` as query (``frames`` (G, crops,
        D, T), ``proj`` (G, crops, T, D), optional frame masks (G, crops, T)) -> (G,) scores:
        the mean over crop pairs of cos(e_s, e_q)."""
        cos = self.score_grouped(a["frames"], b["frames"], hs=a["proj"], hq=b["proj"],
                                 support_mask=mask_a, query_mask=mask_b)
        return cos.flatten(1).mean(dim=1)

    def forward(self, support: torch.Tensor, query: torch.Tensor,
                support_mask: torch.Tensor | None = None, query_mask: torch.Tensor | None = None):
        """support (Ns, D, Ts), query (Nq, D, Tq), masks (Ns, Ts) / (Nq, Tq) -> (e_s, e_q)."""
        masks = [m if m is None else m.unsqueeze(0) for m in (support_mask, query_mask)]
        e_s, e_q = self.forward_grouped(support.unsqueeze(0), query.unsqueeze(0),
                                        support_mask=masks[0], query_mask=masks[1])
        return e_s[0], e_q[0]

    def forward_grouped(self, support: torch.Tensor, query: torch.Tensor,
                        hs: torch.Tensor | None = None, hq: torch.Tensor | None = None,
                        support_mask: torch.Tensor | None = None,
                        query_mask: torch.Tensor | None = None):
        """support (G, Ns, D, Ts), query (G, Nq, D, Tq) -> e_s, e_q each (G, Nq, Ns, E).

        ``hs``/``hq`` may carry precomputed :meth:`project` outputs, shaped (G, N, T, D).
        Masks (G, Ns, Ts) / (G, Nq, Tq), True on real frames; the values of padded frames
        (in ``support``, ``query``, ``hs``, ``hq``) are ignored.
        """
        pooled_s, pooled_q = self._pool(support, query, hs, hq, support_mask, query_mask)
        return F.linear(pooled_s, self.fc), F.linear(pooled_q, self.fc)

    def score_grouped(self, support: torch.Tensor, query: torch.Tensor,
                      hs: torch.Tensor | None = None, hq: torch.Tensor | None = None,
                      support_mask: torch.Tensor | None = None,
                      query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """cos(e_s, e_q) for every pair, (G, Nq, Ns), without forming the embeddings.

        With P the projection and M = P^T P, cos(Pa, Pb) = a^T M b / sqrt(a^T M a b^T M b):
        a D x D product instead of an E x D one per vector.
        """
        a, b = self._pool(support, query, hs, hq, support_mask, query_mask)
        gram = self.fc.t() @ self.fc
        a_m, b_m = a @ gram, b @ gram
        dot = (a_m * b).sum(-1)
        norms = ((a_m * a).sum(-1) * (b_m * b).sum(-1)).clamp_min(1e-24).sqrt()
        return dot / norms

    def _pool(self, support, query, hs, hq, support_mask=None, query_mask=None):
        """Attention-pooled, batch-normalised pair vectors (pooled_s, pooled_q), each (G, Nq, Ns, D)."""
        g, ns, d, ts = support.shape
        nq, tq = query.shape[1], query.shape[3]
        if hs is None:
            hs = self.project(support.reshape(g * ns, d, ts)).reshape(g, ns, ts, d)
        if hq is None:
            hq = self.project(query.reshape(g * nq, d, tq)).reshape(g, nq, tq, d)
        if support_mask is None and query_mask is None:
            attend = cap_attention_literal if self.literal else cap_attention
            w_q, w_s = attend(hs, hq, self.temperature)
            len_q, len_s = tq, ts      # kept as sizes (not floats) so traced exports stay dynamic
        else:
            if support_mask is None:
                support_mask = torch.ones(g, ns, ts, dtype=torch.bool, device=support.device)
            if query_mask is None:
                query_mask = torch.ones(g, nq, tq, dtype=torch.bool, device=query.device)
            w_q, w_s = cap_attention_masked(hs, hq, self.temperature, support_mask, query_mask)
            len_q = query_mask.sum(dim=-1).to(query.dtype)[:, :, None, None]       # (G, Nq, 1, 1)
            len_s = support_mask.sum(dim=-1).to(support.dtype)[:, None, :, None]   # (G, 1, Ns, 1)
        # Pooling (step 6) of the backbone frames, not the projections: p[i,j] = mean_t w[i,j,t] x_t.
        pooled_q = torch.matmul(w_q, query.transpose(2, 3)) / len_q                        # (G, Nq, Ns, D)
        pooled_s = torch.matmul(w_s.transpose(1, 2), support.transpose(2, 3)).transpose(1, 2) / len_s
        # BatchNorm + ReLU (step 7) over all 2 Nq Ns pooled vectors together, as in training.
        both = torch.cat([pooled_q, pooled_s], dim=0).reshape(-1, d)
        both = F.relu(self.att_bn(both)).reshape(2 * g, nq, ns, d)
        return both[g:], both[:g]
