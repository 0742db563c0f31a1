"""Losses against direct, loop-level restatements of their definitions."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from capsv.train.losses import LOSSES, Embeddings, LossConfigError, Objective

B, M, E, N_CLASSES = 4, 3, 8, 11


@pytest.fixture
def batch():
    torch.manual_seed(0)
    labels = torch.tensor([3, 0, 9, 5])
    emb = torch.randn(M * B, E, dtype=torch.float64)
    e_s = torch.randn((M - 1) * B, B, E, dtype=torch.float64)
    e_q = torch.randn((M - 1) * B, B, E, dtype=torch.float64)
    return labels, emb, e_s, e_q


def _ce(logits_rows, targets) -> float:
    """Mean cross-entropy written out: -log softmax of the target, averaged."""
    total = 0.0
    for row, t in zip(logits_rows, targets):
        total += -(row[t] - math.log(sum(math.exp(v) for v in row)))
    return total / len(targets)


def _cos(a, b) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_registry_lists_every_loss():
    assert LOSSES.names() == ["aamsoftmax", "amsoftmax", "angleproto", "proto", "softmax",
                              "softmaxproto"]


def test_proto_instance_wise(batch):
    labels, emb, _, _ = batch
    out = Objective("proto", E, N_CLASSES).double()(Embeddings(B, emb=emb), labels)
    rows, targets = [], []
    for r in range((M - 1) * B):          # query r = emb[B + r], speaker r mod B
        q = emb[B + r]
        rows.append([float(q @ (emb[j] / emb[j].norm())) for j in range(B)])
        targets.append(r % B)
    assert out.loss.item() == pytest.approx(_ce(rows, targets), rel=1e-12)
    torch.testing.assert_close(out.logits, torch.tensor(rows, dtype=torch.float64))
    expected_top1 = 100.0 * sum(max(range(B), key=row.__getitem__) == t
                                for row, t in zip(rows, targets)) / len(rows)
    assert out.top1 == pytest.approx(expected_top1)


def test_proto_pairwise_cap_form(batch):
    labels, _, e_s, e_q = batch
    out = Objective("proto", E, N_CLASSES).double()(Embeddings(B, e_s=e_s, e_q=e_q), labels)
    rows = [[float(e_q[r, j] @ (e_s[r, j] / e_s[r, j].norm())) for j in range(B)]
            for r in range((M - 1) * B)]
    assert out.loss.item() == pytest.approx(_ce(rows, [r % B for r in range((M - 1) * B)]),
                                            rel=1e-12)
    assert "loss_g" not in out.parts and out.global_logits is None   # NP alone without --global_clf


def test_global_classifier_instance_wise_uses_every_crop(batch):
    labels, emb, _, _ = batch
    objective = Objective("proto", E, N_CLASSES, global_clf=True).double()
    out = objective(Embeddings(B, emb=emb), labels)
    w = objective.global_clf.weight.detach()
    rows = [[float(emb[i] @ (w[c] / w[c].norm())) for c in range(N_CLASSES)] for i in range(M * B)]
    expected_g = _ce(rows, [int(labels[i % B]) for i in range(M * B)])
    assert out.parts["loss_g"].item() == pytest.approx(expected_g, rel=1e-12)
    assert out.loss.item() == pytest.approx(out.parts["loss_e"].item() + expected_g, rel=1e-12)


def test_global_classifier_cap_uses_matched_pairs_only(batch):
    labels, _, e_s, e_q = batch
    objective = Objective("proto", E, N_CLASSES, global_clf=True).double()
    out = objective(Embeddings(B, e_s=e_s, e_q=e_q), labels)
    w = F.normalize(objective.global_clf.weight.detach(), dim=1)
    # The reference selects the matched pairs with an identity mask; restate it that way.
    eye = torch.eye(B, dtype=torch.float64).repeat(M - 1, 1).unsqueeze(2)
    x = torch.cat([(e_s * eye).sum(1), (e_q * eye).sum(1)])
    expected = F.cross_entropy(x @ w.t(), labels.repeat(2 * (M - 1)))
    assert out.parts["loss_g"].item() == pytest.approx(expected.item(), rel=1e-12)
    assert out.global_logits.shape == (2 * (M - 1) * B, N_CLASSES)


def _classifier_rows(weight, emb, labels, margin_fn):
    """Logits of every crop i (speaker labels[i mod B]) against every class c."""
    return [[margin_fn(_cos(emb[i], weight[c]), c == int(labels[i % B])) for c in range(N_CLASSES)]
            for i in range(M * B)]


@pytest.mark.parametrize("name", ["amsoftmax", "aamsoftmax"])
def test_margin_softmaxes(batch, name):
    labels, emb, _, _ = batch
    m, s = 0.2, 30.0
    objective = Objective(name, E, N_CLASSES, margin=m, scale=s).double()
    out = objective(Embeddings(B, emb=emb), labels)
    if name == "amsoftmax":
        fn = lambda cos, hot: s * (cos - m) if hot else s * cos  # noqa: E731
    else:
        fn = lambda cos, hot: s * math.cos(math.acos(cos) + m) if hot else s * cos  # noqa: E731
    rows = _classifier_rows(objective.main.weight.detach(), emb, labels, fn)
    targets = [int(labels[i % B]) for i in range(M * B)]
    assert out.loss.item() == pytest.approx(_ce(rows, targets), rel=1e-9)


def test_aamsoftmax_stays_monotonic_past_pi():
    """cos(theta + m) turns back up once theta + m > pi; the target logit must keep falling."""
    loss = LOSSES.build("aamsoftmax", nOut=2, n_classes=2, margin=0.5, scale=1.0).double()
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    angles = torch.linspace(2.5, math.pi, 50, dtype=torch.float64)
    x = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    with_margin, _ = loss.logits(x, torch.zeros(50, dtype=torch.long))
    assert (with_margin[1:, 0] <= with_margin[:-1, 0] + 1e-12).all()


def test_softmax_angleproto_and_their_sum(batch):
    labels, emb, _, _ = batch
    torch.manual_seed(1)
    combo = Objective("softmaxproto", E, N_CLASSES).double()
    out = combo(Embeddings(B, emb=emb), labels)
    fc = combo.main.softmax.fc
    rows = (emb @ fc.weight.detach().t() + fc.bias.detach()).tolist()
    softmax_loss = _ce(rows, [int(labels[i % B]) for i in range(M * B)])
    w, b = combo.main.angleproto.w.item(), combo.main.angleproto.b.item()
    centroids = [emb[[B * k + j for k in range(1, M)]].mean(0) for j in range(B)]
    proto_rows = [[w * _cos(emb[i], centroids[j]) + b for j in range(B)] for i in range(B)]
    angle_loss = _ce(proto_rows, list(range(B)))
    assert out.parts["loss_softmax"].item() == pytest.approx(softmax_loss, rel=1e-12)
    assert out.parts["loss_angleproto"].item() == pytest.approx(angle_loss, rel=1e-12)
    assert out.loss.item() == pytest.approx(softmax_loss + angle_loss, rel=1e-12)
    assert (w, b) == (10.0, -5.0)


def test_every_loss_backpropagates_into_embeddings(batch):
    labels, emb, _, _ = batch
    for name in LOSSES.names():
        x = emb.clone().requires_grad_(True)
        Objective(name, E, N_CLASSES, global_clf=True).double()(Embeddings(B, emb=x), labels).loss.backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, name


def test_unusable_combinations_are_clear_errors():
    with pytest.raises(LossConfigError, match="unknown --trainfunc 'ge2e'; choose one of: "
                                              "aamsoftmax, amsoftmax, angleproto, proto"):
        Objective("ge2e", E, N_CLASSES)
    with pytest.raises(LossConfigError, match="--encoder_type CAP is pairwise and trains with "
                                              "--trainfunc proto"):
        Objective("softmax", E, N_CLASSES).check(pairwise=True, per_speaker=2, encoder_type="CAP")
    with pytest.raises(LossConfigError, match="needs --nSpeakers >= 2"):
        Objective("proto", E, N_CLASSES).check(pairwise=False, per_speaker=1, encoder_type="TAP")
    Objective("softmax", E, N_CLASSES).check(pairwise=False, per_speaker=1, encoder_type="TAP")
