"""Fast exact CAP trial scoring for fixed-size crops, grouped by file (spec §3, §5).

A CAP trial (file s, file q) has two sides. Each is the *same* function of (own file, partner
file), because CAP is symmetric (swapping the roles swaps the outputs): for own crop i and
partner crop j, with unit-norm projections H, their crop means m, backbone frames X,

    summary[i,j] = sum_u <m_own[i], H_partner[j,u]> H_partner[j,u]           (D)
    w[i,j]       = softmax_t(<H_own[i,t], summary[i,j]> / tau) + 1           (T)
    pooled[i,j]  = X_own[i] w[i,j] / T                                        (D)
    v[i,j]       = normalize(R relu(BN(pooled[i,j])))                         (D)

and the score is mean_{i,j} <v_q[i,j], v_s[j,i]>, the mean crop-pair cosine of spec §5.
``R`` is the triangular factor of the projection P = Q R (Q orthonormal columns), so
cos(P a, P b) = cos(R a, R b) on D-dim vectors instead of E-dim ones.

The per-crop products are matrix-vector sized (10 crops of ~88 frames), which run far below
a CPU's matmul rate when batched per trial. Here the trials of a chunk become "side jobs"
(own, partner), and each step gathers every job that shares one file into one large matmul:
the summary step groups jobs by partner file (one file's H against the means of all its
partners' crops), the attention/pooling/projection steps group them by own file (one file's
H and X against all its partners' summaries). A job's summary, then its unit vectors, live in
one preallocated buffer row, so memory is bounded by the chunk size, not the trial count.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# One job row holds num_eval^2 * D floats (10 x 10 x 128 -> 51 KB); 2 jobs per trial. The
# buffer bounds the scoring memory whatever the trial count (bench/bench_memory.py).
DEFAULT_BUFFER_MB = 64       # 655 trials a chunk; 128 MB measured ~10 % faster, 16 MB ~6 % slower
TRIANGLE_BLOCK = 32


def projection_factor(fc: torch.Tensor) -> torch.Tensor:
    """R (min(E, D), D) with fc = Q R, Q orthonormal columns: ||fc a|| = ||R a|| for every a."""
    return torch.linalg.qr(fc.double(), mode="reduced")[1].to(fc.dtype)


def bn_affine(bn: torch.nn.BatchNorm1d, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as scale/shift, with the pooling's 1/T folded into the scale."""
    inv = torch.rsqrt(bn.running_var + bn.eps)
    weight = bn.weight if bn.affine else torch.ones_like(inv)
    bias = bn.bias if bn.affine else torch.zeros_like(inv)
    return weight * inv / frames, bias - bn.running_mean * weight * inv


def _groups(keys: np.ndarray):
    """(key, positions) for every distinct key, positions as int64 arrays."""
    order = np.argsort(keys, kind="stable")
    cuts = np.flatnonzero(np.diff(keys[order])) + 1
    for part in np.split(order, cuts):
        yield int(keys[part[0]]), part


class GroupedCapScorer:
    """Scores fixed-size CAP trials from the feature stores of :class:`capsv.evaluation.pipeline.FileFeatures`.

    frames_store (n_files, N, D, T) backbone frames; proj_store (n_files, N, T, D) unit-norm
    meta-projections. The CAP module must be in eval mode (BatchNorm running statistics).

    Buffer layout: the k_f jobs of own file f form one block (N_own, k_f, N_partner, D), so
    the own-file step reads and rewrites it as a (N_own, k_f N_partner, D) view, with no copy.
    Its rows of N_partner x D floats are addressed as ``base_f + i k_f + slot``.
    """

    def __init__(self, cap, frames_store: torch.Tensor, proj_store: torch.Tensor,
                 buffer_mb: float = DEFAULT_BUFFER_MB):
        self.frames, self.proj = frames_store, proj_store
        _, self.n, self.d, self.t = frames_store.shape
        # The stores may be CPU memory maps of a disk store (capsv.evaluation.feature_store) while the
        # head computes on a GPU: each file's features are then moved there as it is used.
        self.device = cap.fc.device
        # Crop means over tau: the summaries, then the logits, come out divided by tau.
        self.means = self._per_file(proj_store, lambda h: h.mean(dim=2)) / cap.temperature  # (files, N, D)
        self.r_t = projection_factor(cap.fc).t().contiguous()                # (D, E'), E' <= D
        self.e = self.r_t.shape[1]
        self.scale, self.shift = bn_affine(cap.att_bn, self.t)
        # With every BN scale > 0, relu(scale y + shift) = scale relu(y + shift / scale), and
        # the scale moves into R: the frames are then used as stored, not rescaled per file.
        self.scale_in_r = bool((self.scale > 0).all())
        if self.scale_in_r:
            self.r_t = self.r_t * self.scale[:, None]
            self.shift = self.shift / self.scale
            self.frame_sums = self._per_file(frames_store, lambda x: x.sum(dim=3))   # (files, N, D)
        job_bytes = self.n * self.n * self.d * frames_store.element_size()
        self.chunk = max(1, int(buffer_mb * 2**20 // (2 * job_bytes)))     # trials per chunk
        self.buffer = None

    def _per_file(self, store: torch.Tensor, reduce, files: int = 1024) -> torch.Tensor:
        """``reduce`` of every file's features, on the head's device, ``files`` at a time (a
        disk store is then read once, in order, and never copied whole)."""
        return torch.cat([reduce(store[a:a + files].to(self.device))
                          for a in range(0, store.shape[0], files)])

    def score(self, pairs: np.ndarray, on_chunk=None) -> np.ndarray:
        """Scores of (support file, query file) index pairs, float64, in the pairs' order.

        Trials are scored in support-file order: then every support file's trials fall in one
        chunk and its side jobs form one wide group (5-10 % faster on random lists; real lists
        are mostly written that way already).
        """
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        order = np.argsort(pairs[:, 0], kind="stable")
        scores = np.empty(len(pairs), dtype=np.float64)
        for start in range(0, len(pairs), self.chunk):
            rows = order[start:start + self.chunk]
            scores[rows] = self._score_chunk(pairs[rows])
            if on_chunk is not None:
                on_chunk(len(rows))
        return scores

    def _score_chunk(self, pairs: np.ndarray) -> np.ndarray:
        c, n = len(pairs), self.n
        # Job r: own = query, partner = support; job c + r: the support side of trial r.
        own = np.concatenate([pairs[:, 1], pairs[:, 0]])
        partner = np.concatenate([pairs[:, 0], pairs[:, 1]])
        blocks = list(_groups(own))
        rows = self._rows(2 * c)                                             # (2c N, N_p D)
        first_row = np.empty(2 * c, dtype=np.int64)      # row of (job, i=0); i adds k_f
        stride = np.empty(2 * c, dtype=np.int64)
        base = 0
        for _, jobs in blocks:
            first_row[jobs] = base + np.arange(len(jobs))
            stride[jobs] = len(jobs)
            base += n * len(jobs)
        job_rows = first_row[:, None] + stride[:, None] * np.arange(n)       # (2c, N_own)
        for p, jobs in _groups(partner):
            self._summaries(p, own[jobs], rows, job_rows[jobs])
        base = 0
        for f, jobs in blocks:
            self._unit_vectors(f, rows[base:base + n * len(jobs)], len(jobs))
            base += n * len(jobs)
        return self._pair_means(rows, job_rows[:c], job_rows[c:])

    def _rows(self, jobs: int) -> torch.Tensor:
        """The buffer, allocated once at the full chunk's size (whatever the list's length, so
        the scoring memory is the same for 100 files as for 100,000), as (jobs N, N D) rows."""
        if self.buffer is None or self.buffer.shape[0] < jobs * self.n:
            rows = max(jobs, 2 * self.chunk) * self.n
            self.buffer = torch.empty((rows, self.n * self.d), dtype=self.frames.dtype,
                                      device=self.device)
        return self.buffer[:jobs * self.n]

    def _summaries(self, p: int, owners: np.ndarray, rows: torch.Tensor, dest: np.ndarray) -> None:
        """summary[i, j] of every job whose partner is file p, as two large matmuls, written
        to the rows ``dest`` (k, N_own)."""
        n, t, d = self.n, self.t, self.d
        h = self.proj[p].to(self.device)                                     # (N_p, T, D)
        means = self.means[torch.from_numpy(owners).to(h.device)].reshape(-1, d)   # (k N_own, D)
        ctx = torch.mm(h.reshape(n * t, d), means.t()).reshape(n, t, -1)    # (N_p, T, k N_own)
        summary = torch.bmm(ctx.transpose(1, 2), h)                          # (N_p, k N_own, D)
        rows.view(-1, n, d).index_copy_(0, torch.from_numpy(dest.reshape(-1)).to(h.device),
                                        summary.transpose(0, 1))

    def _unit_vectors(self, f: int, block: torch.Tensor, k: int) -> None:
        """Replace the summaries in own file f's block by its jobs' unit vectors v[i, j]."""
        n, d, e = self.n, self.d, self.e
        summary = block.view(n, k * n, d)                                     # (N_own, k N_p, D)
        logits = torch.bmm(summary, self.proj[f].to(self.device).transpose(1, 2))  # (N_own, k N_p, T)
        # BN(X (softmax + 1) / T) = softmax @ Xs + (Xs 1 + shift), Xs = X scaled per channel:
        # one fused baddbmm instead of separate passes for +1, 1/T and the BN affine.
        if self.scale_in_r:
            xs, x_sum = self.frames[f].to(self.device), self.frame_sums[f]
        else:
            xs = self.frames[f].to(self.device) * self.scale[:, None]        # (N_own, D, T)
            x_sum = xs.sum(dim=2)
        offset = (x_sum + self.shift).unsqueeze(1)                           # (N_own, 1, D)
        pooled = torch.baddbmm(offset, torch.softmax(logits, dim=-1), xs.transpose(1, 2))
        v = self.project(pooled.relu_().view(-1, d))                         # (N_own k N_p, E')
        summary[..., :e] = F.normalize(v, dim=1).view(n, k * n, e)

    def project(self, a: torch.Tensor) -> torch.Tensor:
        """a @ R^T for (M, D) rows, skipping R's zero triangle: output columns e0:e1 only need
        input columns from e0 on (R[e, d] = 0 for d < e), which saves ~3/8 of the products."""
        cuts = range(0, self.e, TRIANGLE_BLOCK)
        return torch.cat([a[:, e0:] @ self.r_t[e0:, e0:e0 + TRIANGLE_BLOCK] for e0 in cuts], dim=1)

    def _pair_means(self, rows: torch.Tensor, rows_q: np.ndarray, rows_s: np.ndarray,
                    sub: int = 16) -> np.ndarray:
        """mean_{i,j} v_q[i, j] . v_s[j, i] per trial, gathered ``sub`` trials at a time (a
        few hundred KB, so the gathered copies are multiplied while still in cache)."""
        n, e = self.n, self.e
        out = np.empty(len(rows_q), dtype=np.float64)
        for a in range(0, len(rows_q), sub):
            q = rows.index_select(0, torch.from_numpy(rows_q[a:a + sub].reshape(-1)).to(rows.device))
            s = rows.index_select(0, torch.from_numpy(rows_s[a:a + sub].reshape(-1)).to(rows.device))
            q = q.view(-1, n, n, self.d)[..., :e]
            s = s.view(-1, n, n, self.d)[..., :e].transpose(1, 2)
            out[a:a + sub] = ((q * s).sum(dim=(1, 2, 3)) / (n * n)).double().cpu().numpy()
        return out
