"""Training objectives by name (``--trainfunc``), plus the paper's global classifier.

Every batch holds B speakers x M utterances (``--nSpeakers M``), utterance-major: rows
``0..B-1`` are utterance 0 (the supports), query row ``r`` belongs to speaker ``r mod B``.
The head's output arrives as :class:`Embeddings`:

- instance-wise heads (TAP, SAP): ``emb`` (M*B, E);
- the pairwise CAP head: ``e_s``, ``e_q`` (Nq, B, E) with Nq = (M-1)*B, one embedding of
  each side for every (query, support) pair.

Losses (spec §4 for ``proto``; the others are the usual definitions):

- ``proto``: prototypical (NP). TAP/SAP: logits = Q @ normalize(S)^T (queries not normalised).
  CAP: logit[r, j] = e_q[r, j] . normalize(e_s[r, j]). Cross-entropy against r mod B.
- ``softmax``: Linear(E, n_classes) + cross-entropy over every crop.
- ``amsoftmax``: additive margin, s * (cos - m) for the target class.
- ``aamsoftmax``: additive angular margin (ArcFace), s * cos(theta + m) for the target.
- ``angleproto``: angular prototypical: cos(utterance 0, mean of the others) * w + b,
  w, b learnable (init 10, -5).
- ``softmaxproto``: ``softmax`` + ``angleproto``.

``--global_clf`` adds the paper's classifier (:class:`GlobalClassifier`): logits
x @ normalize_rows(W)^T, with x every crop embedding (TAP/SAP) or the matched pairs'
e_s and e_q (CAP). Total loss = main + global; training accuracy = top-1 of the main logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CapsvError
from ..registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss (--trainfunc)")


class LossConfigError(CapsvError):
    """A loss that cannot be used with the chosen pooling or batch layout."""


@dataclass
class Embeddings:
    """One batch's head outputs; see the module docstring for shapes and layout."""

    batch_size: int
    emb: torch.Tensor | None = None
    e_s: torch.Tensor | None = None
    e_q: torch.Tensor | None = None

    @property
    def pairwise(self) -> bool:
        return self.e_s is not None

    @property
    def per_speaker(self) -> int:
        """M, the utterances per speaker in the batch."""
        if self.pairwise:
            return self.e_q.shape[0] // self.batch_size + 1
        return self.emb.shape[0] // self.batch_size

    def matched_pairs(self) -> torch.Tensor:
        """CAP: (e_s, e_q) of each query with its own speaker's support, stacked: (2*Nq, E)."""
        rows = torch.arange(self.e_q.shape[0], device=self.e_q.device)
        cols = rows % self.batch_size
        return torch.cat([self.e_s[rows, cols], self.e_q[rows, cols]])


@dataclass
class LossOutput:
    loss: torch.Tensor                      # scalar, what backward() runs on
    top1: torch.Tensor                      # percent, on ``logits`` (0-dim; no GPU sync)
    logits: torch.Tensor                    # the main loss's logits (for accuracy, tests)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)   # named loss terms
    global_logits: torch.Tensor | None = None   # the global classifier's, when enabled


@torch.no_grad()
def top1_accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=1) == target).float().mean() * 100.0


def _query_targets(emb: Embeddings) -> torch.Tensor:
    n_queries = (emb.per_speaker - 1) * emb.batch_size
    device = (emb.e_q if emb.pairwise else emb.emb).device
    return torch.arange(n_queries, device=device) % emb.batch_size


class _Loss(nn.Module):
    """Base: ``forward(emb, labels (B,)) -> LossOutput``; ``labels`` are global speaker indices."""

    supports_pairwise = False
    min_per_speaker = 1

    def __init__(self, nOut: int, n_classes: int, margin: float, scale: float):
        super().__init__()

    def check(self, pairwise: bool, per_speaker: int, name: str, encoder_type: str) -> None:
        if pairwise and not self.supports_pairwise:
            raise LossConfigError(f"--trainfunc {name} needs an instance-wise pooling (TAP or SAP); "
                                  f"--encoder_type {encoder_type} is pairwise and trains with "
                                  "--trainfunc proto")
        if per_speaker < self.min_per_speaker:
            raise LossConfigError(f"--trainfunc {name} needs --nSpeakers >= {self.min_per_speaker} "
                                  f"(a support and a query per speaker), got {per_speaker}")


@LOSSES.register("proto")
class PrototypicalLoss(_Loss):
    """NP loss: each query against every speaker's support (spec §4)."""

    supports_pairwise = True
    min_per_speaker = 2

    def forward(self, emb: Embeddings, labels: torch.Tensor) -> LossOutput:
        if emb.pairwise:
            logits = (emb.e_q * F.normalize(emb.e_s, dim=2)).sum(dim=2)          # (Nq, B)
        else:
            support, query = emb.emb[:emb.batch_size], emb.emb[emb.batch_size:]
            logits = query @ F.normalize(support, dim=1).t()                     # (Nq, B)
        target = _query_targets(emb)
        return LossOutput(F.cross_entropy(logits, target), top1_accuracy(logits, target), logits)


class _Classifier(_Loss):
    """Shared by the softmax family: every crop is classified into ``n_classes`` speakers."""

    def crop_labels(self, emb: Embeddings, labels: torch.Tensor) -> torch.Tensor:
        return labels.repeat(emb.per_speaker)

    def logits(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(training logits with the margin, plain logits for accuracy)."""
        raise NotImplementedError

    def forward(self, emb: Embeddings, labels: torch.Tensor) -> LossOutput:
        target = self.crop_labels(emb, labels)
        with_margin, plain = self.logits(emb.emb, target)
        return LossOutput(F.cross_entropy(with_margin, target), top1_accuracy(plain, target), plain)


@LOSSES.register("softmax")
class SoftmaxLoss(_Classifier):
    def __init__(self, nOut: int, n_classes: int, margin: float, scale: float):
        super().__init__(nOut, n_classes, margin, scale)
        self.fc = nn.Linear(nOut, n_classes)

    def logits(self, x, target):
        out = self.fc(x)
        return out, out


def _one_hot(target: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    return F.one_hot(target, n).to(like.dtype)


@LOSSES.register("amsoftmax")
class AMSoftmaxLoss(_Classifier):
    """Additive margin softmax: logits s * (cos - m * onehot)."""

    def __init__(self, nOut: int, n_classes: int, margin: float, scale: float):
        super().__init__(nOut, n_classes, margin, scale)
        self.margin, self.scale = float(margin), float(scale)
        self.weight = nn.Parameter(torch.empty(n_classes, nOut))
        nn.init.xavier_normal_(self.weight)

    def logits(self, x, target):
        cos = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()
        return self.scale * (cos - self.margin * _one_hot(target, cos.shape[1], cos)), cos


@LOSSES.register("aamsoftmax")
class AAMSoftmaxLoss(AMSoftmaxLoss):
    """Additive angular margin (ArcFace): s * cos(theta + m) for the target class.

    Where theta + m would pass pi (cos(theta + m) no longer decreasing), the target logit
    uses cos(theta) - m * sin(m) instead, the usual monotonic continuation.
    """

    def logits(self, x, target):
        cos = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()
        sin = torch.sqrt((1.0 - cos * cos).clamp(0.0, 1.0))
        m = self.margin
        shifted = cos * math.cos(m) - sin * math.sin(m)
        shifted = torch.where(cos > math.cos(math.pi - m), shifted, cos - math.sin(math.pi - m) * m)
        hot = _one_hot(target, cos.shape[1], cos)
        return self.scale * (hot * shifted + (1.0 - hot) * cos), cos


@LOSSES.register("angleproto")
class AngularPrototypicalLoss(_Loss):
    """cos(utterance 0 of speaker i, centroid of speaker j's other utterances) * w + b."""

    min_per_speaker = 2

    def __init__(self, nOut: int, n_classes: int, margin: float, scale: float):
        super().__init__(nOut, n_classes, margin, scale)
        self.w = nn.Parameter(torch.tensor(10.0))
        self.b = nn.Parameter(torch.tensor(-5.0))

    def forward(self, emb: Embeddings, labels: torch.Tensor) -> LossOutput:
        b = emb.batch_size
        x = emb.emb.reshape(emb.per_speaker, b, -1)
        query, centroid = x[0], x[1:].mean(dim=0)
        cos = F.normalize(query, dim=1) @ F.normalize(centroid, dim=1).t()     # (B, B)
        logits = cos * self.w.clamp(min=1e-6) + self.b
        target = torch.arange(b, device=logits.device)
        return LossOutput(F.cross_entropy(logits, target), top1_accuracy(logits, target), logits)


@LOSSES.register("softmaxproto")
class SoftmaxProtoLoss(_Loss):
    """``softmax`` + ``angleproto``; the accuracy is the softmax classifier's."""

    min_per_speaker = 2

    def __init__(self, nOut: int, n_classes: int, margin: float, scale: float):
        super().__init__(nOut, n_classes, margin, scale)
        self.softmax = SoftmaxLoss(nOut, n_classes, margin, scale)
        self.angleproto = AngularPrototypicalLoss(nOut, n_classes, margin, scale)

    def forward(self, emb: Embeddings, labels: torch.Tensor) -> LossOutput:
        s = self.softmax(emb, labels)
        p = self.angleproto(emb, labels)
        return LossOutput(s.loss + p.loss, s.top1, s.logits,
                          {"loss_softmax": s.loss, "loss_angleproto": p.loss})


class GlobalClassifier(nn.Module):
    """The paper's global classification term: cross-entropy of x @ normalize_rows(W)^T.

    ``weight`` is the reference's ``global_w`` (n_classes, E), Xavier-uniform.
    """

    def __init__(self, n_classes: int, nOut: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, nOut))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, emb: Embeddings, labels: torch.Tensor):
        if emb.pairwise:
            x = emb.matched_pairs()
            target = labels.repeat(2 * (emb.per_speaker - 1))
        else:
            x = emb.emb
            target = labels.repeat(emb.per_speaker)
        logits = x @ F.normalize(self.weight, dim=1).t()
        return F.cross_entropy(logits, target), logits


class Objective(nn.Module):
    """``--trainfunc`` loss plus the optional ``--global_clf`` term; holds their parameters."""

    def __init__(self, trainfunc: str, nOut: int, n_classes: int, global_clf: bool = False,
                 margin: float = 0.1, scale: float = 30.0, global_weight: float = 1.0):
        super().__init__()
        if trainfunc not in LOSSES:
            raise LossConfigError(f"unknown --trainfunc '{trainfunc}'; choose one of: "
                                  f"{', '.join(LOSSES.names())}")
        self.trainfunc = trainfunc
        self.main = LOSSES.build(trainfunc, nOut=nOut, n_classes=n_classes, margin=margin,
                                 scale=scale)
        self.global_clf = GlobalClassifier(n_classes, nOut) if global_clf else None
        self.global_weight = float(global_weight)

    def check(self, pairwise: bool, per_speaker: int, encoder_type: str) -> None:
        """Raise :class:`LossConfigError` for a pooling/batch layout this loss cannot train."""
        self.main.check(pairwise, per_speaker, self.trainfunc, encoder_type)

    def forward(self, emb: Embeddings, labels: torch.Tensor) -> LossOutput:
        out = self.main(emb, labels)
        parts = {"loss_e": out.loss, **out.parts}
        total, global_logits = out.loss, None
        if self.global_clf is not None:
            parts["loss_g"], global_logits = self.global_clf(emb, labels)
            total = total + self.global_weight * parts["loss_g"]
        return LossOutput(total, out.top1, out.logits, parts, global_logits)
