"""Masked pooling and whole-utterance scoring (--eval_frames 0)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from capsv import cli
from capsv.api import SpeakerVerifier
from capsv.models.pooling import CAP, SAP, TAP, cap_attention, cap_attention_masked, pad_frames

A, B = "id10003/vidC/00003.wav", "id10002/vidB/00002.wav"


pytestmark = pytest.mark.usefixtures("one_thread")


def _cap_with_statistics(seed: int = 0) -> CAP:
    torch.manual_seed(seed)
    cap = CAP(16, 24).eval()
    with torch.no_grad():
        cap.att_bn.running_mean.normal_()
        cap.att_bn.running_var.uniform_(0.5, 2.0)
        cap.att_bn.weight.uniform_(0.5, 1.5)
        cap.att_bn.bias.normal_()
    return cap


@pytest.mark.parametrize("head", [TAP, SAP])
def test_masked_instance_pooling_equals_each_item_alone(head):
    torch.manual_seed(1)
    pool = head(16, 8).eval()
    frames = [torch.randn(16, t) for t in (5, 17, 11, 17)]
    padded, mask = pad_frames(frames)
    assert padded.shape == (4, 16, 17) and mask.shape == (4, 17)
    assert mask.sum(1).tolist() == [5, 17, 11, 17]
    padded[~mask.unsqueeze(1).expand_as(padded)] = 1e3    # padding values must not matter
    with torch.no_grad():
        batched = pool(padded, mask)
        alone = torch.cat([pool(f.unsqueeze(0)) for f in frames])
        full = pool(torch.stack([frames[1], frames[3]]))
    torch.testing.assert_close(batched, alone, rtol=0, atol=2e-6)
    # an all-True mask is the unmasked computation
    torch.testing.assert_close(pool(torch.stack([frames[1], frames[3]]), torch.ones(2, 17, dtype=torch.bool)),
                               full, rtol=0, atol=1e-6)


def test_masked_cap_equals_unmasked_on_every_pair():
    cap = _cap_with_statistics()
    lengths_s, lengths_q = [9, 23, 14], [30, 7, 19]
    supports = [torch.randn(3, 16, t).relu() for t in lengths_s]   # 3 crops each
    queries = [torch.randn(2, 16, t).relu() for t in lengths_q]
    sup, mask_s = pad_frames(supports)
    qry, mask_q = pad_frames(queries)
    assert sup.shape == (3, 3, 16, 23) and mask_s.shape == (3, 3, 23)
    sup[~mask_s.unsqueeze(2).expand_as(sup)] = 7.0         # padding values must not matter
    qry[~mask_q.unsqueeze(2).expand_as(qry)] = -3.0
    with torch.no_grad():
        e_s, e_q = cap.forward_grouped(sup, qry, support_mask=mask_s, query_mask=mask_q)
        assert e_s.shape == e_q.shape == (3, 2, 3, 24)
        for g in range(3):
            ref_s, ref_q = cap(supports[g], queries[g])           # the unmasked, unpadded form
            torch.testing.assert_close(e_s[g], ref_s, rtol=0, atol=2e-6)
            torch.testing.assert_close(e_q[g], ref_q, rtol=0, atol=2e-6)
        # the single-group entry point takes masks too
        one_s, one_q = cap(sup[1], qry[1], support_mask=mask_s[1], query_mask=mask_q[1])
        torch.testing.assert_close(one_s, e_s[1], rtol=0, atol=1e-6)


def test_masked_attention_weights_match_and_ignore_padding():
    torch.manual_seed(3)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape), dim=-1)
    hs, hq = unit(1, 2, 6, 8), unit(1, 3, 4, 8)
    w_q, w_s = cap_attention(hs, hq, 0.05)
    pad = lambda h, n: torch.cat([h, unit(*h.shape[:2], n, 8)], dim=2)   # junk frames, masked out
    mask_s = torch.arange(9) < 6
    mask_q = torch.arange(7) < 4
    mw_q, mw_s = cap_attention_masked(pad(hs, 3), pad(hq, 3), 0.05,
                                      mask_s.expand(1, 2, 9), mask_q.expand(1, 3, 7))
    torch.testing.assert_close(mw_q[..., :4], w_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(mw_s[..., :6], w_s, rtol=0, atol=1e-6)
    assert (mw_q[..., 4:] == 0).all() and (mw_s[..., 6:] == 0).all()


def test_unmasked_heads_still_match_the_reference(reference_dir):
    """The default path is unchanged: pooling the reference frames gives the reference outputs."""
    from capsv.models.checkpoint import load_model
    debug = reference_dir / "debug"
    net, _ = load_model(str(reference_dir / "ResNetSE34L_CAP.model"), "ResNetSE34L")
    frames_a = torch.from_numpy(np.load(debug / "ResNetSE34L_CAP.frames_A.npy"))
    frames_b = torch.from_numpy(np.load(debug / "ResNetSE34L_CAP.frames_B.npy"))
    with torch.no_grad():
        e_s, e_q = net.pooling(frames_a, frames_b)
        full = torch.ones(10, frames_a.shape[-1], dtype=torch.bool)
        m_s, m_q = net.pooling(frames_a, frames_b, support_mask=full, query_mask=full)
    ref_s = np.load(debug / "ResNetSE34L_CAP.cap_ref_A.npy")
    ref_q = np.load(debug / "ResNetSE34L_CAP.cap_com_B.npy")
    np.testing.assert_allclose(e_s.numpy(), ref_s, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(e_q.numpy(), ref_q, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(m_s, e_s, rtol=0, atol=1e-5)
    torch.testing.assert_close(m_q, e_q, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def utterances(tmp_path_factory, reference_dir):
    """Whole utterances of several lengths: slices of the reference files (0.4 s to 1.3 s)."""
    folder = tmp_path_factory.mktemp("utts")
    names = []
    for k, (source, start, length) in enumerate([(A, 0, 6400), (B, 8000, 14000), (A, 20000, 9001),
                                                 (B, 0, 20800), (A, 30000, 11111)]):
        audio, _ = sf.read(reference_dir / "wav" / source, dtype="int16")
        name = f"u{k}.wav"
        sf.write(folder / name, audio[start:start + length], 16000, subtype="PCM_16")
        names.append(name)
    return folder, names


@pytest.mark.parametrize("encoder", ["TAP", "CAP"])
def test_batched_full_length_equals_one_at_a_time(reference_dir, utterances, encoder):
    folder, names = utterances
    sv = SpeakerVerifier.from_checkpoint(reference_dir / f"ResNetSE34L_{encoder}.model",
                                         model="ResNetSE34L", eval_frames=0)
    pairs = [(folder / a, folder / b) for a, b in [(names[0], names[1]), (names[2], names[3]),
                                                   (names[4], names[0]), (names[1], names[4]),
                                                   (names[3], names[2])]]
    batched = sv.score_pairs(pairs)
    alone = np.array([sv.score(a, b) for a, b in pairs])
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-6)
    assert np.ptp(batched) > 1e-4                        # distinct pairs, distinct scores
    if encoder == "CAP":                                 # whole utterance = one crop of its own length
        frames = sv.embed(folder / names[3])
        assert frames.shape == (1, 128, (20800 // 160 + 1 + 3) // 4)


def test_cli_eval_full_length_matches_api(reference_dir, utterances, tmp_path, capsys):
    folder, names = utterances
    trials = tmp_path / "trials.txt"
    trials.write_text(f"1 {names[0]} {names[1]}\n0 {names[2]} {names[3]}\n1 {names[4]} {names[0]}\n"
                      f"0 {names[3]} {names[1]}\n")
    ckpt = reference_dir / "ResNetSE34L_CAP.model"
    code = cli.main(["eval", "--initial_model", str(ckpt), "--model", "ResNetSE34L", "--test_list",
                     str(trials), "--test_path", str(folder), "--eval_frames", "0",
                     "--save_scores", str(tmp_path / "s.txt"), "--no_progress",
                     "--nDataLoaderThread", "0", "--device", "cpu"])
    assert code == 0 and "EER" in capsys.readouterr().out
    from_eval = [float(l.split()[3]) for l in (tmp_path / "s.txt").read_text().splitlines()]
    sv = SpeakerVerifier.from_checkpoint(ckpt, model="ResNetSE34L", eval_frames=0)
    lines = [l.split() for l in trials.read_text().splitlines()]
    alone = [sv.score(folder / a, folder / b) for _, a, b in lines]
    np.testing.assert_allclose(from_eval, alone, rtol=0, atol=1e-6)


def test_too_short_for_full_length_is_a_clear_error(reference_dir, tmp_path):
    from capsv.errors import CapsvError
    sf.write(tmp_path / "tiny.wav", np.ones(300, np.int16), 16000)
    sv = SpeakerVerifier.from_checkpoint(reference_dir / "ResNetSE34L_TAP.model",
                                         model="ResNetSE34L", eval_frames=0)
    with pytest.raises(CapsvError, match="too short for whole-utterance"):
        sv.embed(tmp_path / "tiny.wav")
