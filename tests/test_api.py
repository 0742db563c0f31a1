"""SpeakerVerifier and the verify / embed / score commands, against the reference outputs."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from capsv import cli
from capsv.api import InputError, SpeakerVerifier, Verification, to_int16_scale
from capsv.models.checkpoint import save_checkpoint
from capsv.errors import CapsvError

# trial 7 of the fixture: the debug tensors' pair (A = path1 = CAP support)
A, B = "id10003/vidC/00003.wav", "id10002/vidB/00002.wav"
SHORT = "id10001/vidA/00001.wav"          # 1.5 s: padded into 10 identical crops


pytestmark = pytest.mark.usefixtures("one_thread")


def reference_scores(reference_dir, encoder: str) -> dict[tuple[str, str], float]:
    lines = (reference_dir / f"ResNetSE34L_{encoder}.scores.txt").read_text().split("\n")
    return {(f[1], f[2]): float(f[3]) for f in (l.split() for l in lines) if f}


@pytest.fixture(scope="module")
def verifiers(reference_dir):
    return {enc: SpeakerVerifier.from_checkpoint(reference_dir / f"ResNetSE34L_{enc}.model",
                                                 model="ResNetSE34L")
            for enc in ("TAP", "CAP")}


def small(verifier: SpeakerVerifier, **kw) -> SpeakerVerifier:
    """The same network with a cheaper protocol, for tests of mechanics, not parity."""
    return SpeakerVerifier(verifier.net, eval_frames=kw.pop("eval_frames", 60),
                           num_eval=kw.pop("num_eval", 2), **kw)


def test_import_capsv_stays_light():
    code = ("import sys, capsv; assert 'torch' not in sys.modules, 'torch imported'; "
            "from capsv import SpeakerVerifier; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("encoder", ["TAP", "CAP"])
def test_score_pairs_equal_reference_scores(verifiers, reference_dir, encoder):
    wav = reference_dir / "wav"
    ref = reference_scores(reference_dir, encoder)
    pairs = [(A, B)] + [p for p in ref if SHORT in p][:1]
    got = verifiers[encoder].score_pairs([(wav / a, str(wav / b)) for a, b in pairs])
    np.testing.assert_allclose(got, [ref[p] for p in pairs], rtol=0, atol=1e-5)
    assert verifiers[encoder].pairwise == (encoder == "CAP")


def test_arrays_and_tensors_score_like_paths(verifiers, reference_dir):
    sv = small(verifiers["CAP"])
    pa, pb = reference_dir / "wav" / A, reference_dir / "wav" / B
    a16, _ = sf.read(pa, dtype="int16")
    b16, _ = sf.read(pb, dtype="int16")
    expected = sv.score(pa, pb)
    assert sv.score(a16, torch.from_numpy(b16.astype(np.float32)), sample_rate=16000) == \
        pytest.approx(expected, abs=1e-6)
    assert sv.score((a16, 16000), (b16, 16000)) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(InputError, match="without its sample rate; pass sample_rate="):
        sv.score(a16, b16)                       # a waveform's rate cannot be guessed
    unit_a, unit_b = a16 / 32768.0, b16.astype(np.float32) / 32768
    with pytest.warns(UserWarning, match=r"multiplied by 32768"):
        assert sv.score(unit_a, unit_b, sample_rate=16000) == pytest.approx(expected, abs=1e-6)
    explicit = small(verifiers["CAP"], input_scale="unit", sample_rate=16000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert explicit.score(unit_a, unit_b) == pytest.approx(expected, abs=1e-6)


def test_waveform_validation():
    with pytest.raises(InputError, match="mono waveform"):
        to_int16_scale(np.zeros((2, 16000), np.float32))
    with pytest.raises(InputError, match="empty"):
        to_int16_scale(np.zeros(0, np.float32))
    with pytest.raises(InputError, match="NaN"):
        to_int16_scale(np.array([0.1, np.nan], np.float32))
    with pytest.raises(InputError, match="int16 range"):
        to_int16_scale(np.array([0, 70000], np.int32))
    big = np.array([0.5, -2000.0], np.float32)            # int16 scale: kept as is
    np.testing.assert_array_equal(to_int16_scale(big), big)
    np.testing.assert_array_equal(to_int16_scale(np.array([0.5], np.float64), "int16"), [0.5])


def test_verify_uses_stored_or_given_threshold(verifiers, reference_dir, tmp_path):
    wav = reference_dir / "wav"
    base = small(verifiers["TAP"])
    score = base.score(wav / A, wav / B)
    ckpt = tmp_path / "tap.model"
    save_checkpoint(str(ckpt), verifiers["TAP"].net, meta={"eer_threshold": score - 1e-3})
    sv = SpeakerVerifier.from_checkpoint(ckpt, eval_frames=60, num_eval=2)
    assert sv.threshold == pytest.approx(score - 1e-3)
    result = sv.verify(wav / A, wav / B)
    assert isinstance(result, Verification) and result.same_speaker and bool(result)
    assert result.score == pytest.approx(score, abs=1e-6)
    assert not sv.verify(wav / A, wav / B, threshold=score + 1e-3).same_speaker
    with pytest.raises(CapsvError, match="threshold"):
        base.verify(wav / A, wav / B)                       # the reference file stores none


def test_embed_tap_is_unit_length_and_the_unscaled_dot_product_is_the_score(verifiers, reference_dir):
    sv = small(verifiers["TAP"], num_eval=3)
    wav = reference_dir / "wav"
    ea, eb = sv.embed_many([wav / A, wav / B])
    assert ea.shape == (512,) and ea.dtype == np.float32
    np.testing.assert_allclose([np.linalg.norm(ea), np.linalg.norm(eb)], 1.0, atol=1e-6)
    ma, mb = sv.embed_many([wav / A, wav / B], normalize=False)
    score = sv.score(wav / A, wav / B)
    assert float(ma @ mb) == pytest.approx(score, abs=1e-6)     # the mean of crop cosines
    assert float(ea @ eb) * np.linalg.norm(ma) * np.linalg.norm(mb) == pytest.approx(score, abs=1e-6)
    crops = sv.embed(wav / A, crops=True)
    assert crops.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(crops, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(crops.mean(axis=0), ma, atol=1e-6)


def test_embed_cap_returns_frame_features(verifiers, reference_dir):
    frames = small(verifiers["CAP"], eval_frames=60, num_eval=2).embed(reference_dir / "wav" / A)
    assert frames.shape == (2, 128, 62 // 4 + 1)


def _run_cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_verify_prints_reference_score(reference_dir, capsys):
    wav = reference_dir / "wav"
    code, out, _ = _run_cli(["verify", wav / A, wav / B, "--initial_model",
                             reference_dir / "ResNetSE34L_CAP.model", "--model", "ResNetSE34L",
                             "--threshold", "0.5"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("score ")
    assert float(lines[0].split()[1]) == pytest.approx(reference_scores(reference_dir, "CAP")[(A, B)], abs=1e-5)
    assert lines[1].startswith("decision same-speaker")


@pytest.mark.parametrize("encoder", ["TAP", "CAP"])
def test_cli_eval_api_and_verify_agree(verifiers, reference_dir, tmp_path, capsys, encoder):
    """Same pairs, same (reduced) protocol: capsv eval's score file == API == capsv verify."""
    trials = tmp_path / "trials.txt"
    trials.write_text(f"1 {A} {B}\n0 {B} {SHORT}\n1 {SHORT} {A}\n")
    scores_file = tmp_path / "scores.txt"
    ckpt = reference_dir / f"ResNetSE34L_{encoder}.model"
    code, _, _ = _run_cli(["eval", "--initial_model", ckpt, "--model", "ResNetSE34L",
                           "--test_list", trials, "--test_path", reference_dir / "wav",
                           "--eval_frames", 60, "--num_eval", 2, "--save_scores", scores_file,
                           "--nDataLoaderThread", 0, "--no_progress", "--device", "cpu"], capsys)
    assert code == 0
    from_eval = [float(line.split()[3]) for line in scores_file.read_text().splitlines()]
    wav = reference_dir / "wav"
    api = small(verifiers[encoder]).score_pairs([(wav / A, wav / B), (wav / B, wav / SHORT),
                                                 (wav / SHORT, wav / A)])
    np.testing.assert_allclose(api, from_eval, atol=2e-7)
    code, out, _ = _run_cli(["verify", wav / B, wav / SHORT, "--initial_model", ckpt, "--model",
                             "ResNetSE34L", "--eval_frames", 60, "--num_eval", 2], capsys)
    assert code == 0 and float(out.split()[1]) == pytest.approx(from_eval[1], abs=1e-7)
    assert "decision none" in out                          # reference files store no threshold


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "text.wav").write_text("this is not audio\n")
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "nosamples.wav", np.zeros(0, np.int16), 16000)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "unknown.model")
    (tmp_path / "garbage.model").write_bytes(b"\x00\x01 definitely not torch")
    return tmp_path


@pytest.mark.parametrize("case", ["text.wav", "empty.wav", "nosamples.wav", "missing.wav",
                                  "unknown.model", "garbage.model"])
def test_cli_verify_bad_input_is_one_line_error(reference_dir, bad_files, capsys, case):
    good = reference_dir / "wav" / A
    model = reference_dir / "ResNetSE34L_TAP.model"
    if case.endswith(".model"):
        argv = ["verify", good, good, "--initial_model", bad_files / case, "--model", "ResNetSE34L"]
    else:
        argv = ["verify", good, bad_files / case, "--initial_model", model, "--model", "ResNetSE34L"]
    code, out, err = _run_cli(argv, capsys)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("capsv verify: error: ") and case in err
    assert "Traceback" not in err


def test_cli_embed_then_score_reproduces_eval(reference_dir, tmp_path, capsys):
    wav = reference_dir / "wav"
    trials = tmp_path / "trials.txt"
    # (a trial list holds each pair of files once, in either order: see lists.read_trials)
    trials.write_text(f"1 {A} {B}\n0 {B} {SHORT}\n1 {SHORT} {A}\n")
    ckpt = reference_dir / "ResNetSE34L_TAP.model"
    common = ["--initial_model", ckpt, "--model", "ResNetSE34L", "--eval_frames", 60,
              "--num_eval", 2, "--nDataLoaderThread", 0, "--no_progress", "--device", "cpu"]
    code, _, _ = _run_cli(["eval", "--test_list", trials, "--test_path", wav,
                           "--save_scores", tmp_path / "eval.txt", *common], capsys)
    assert code == 0
    code, out, _ = _run_cli(["embed", "--test_list", trials, "--test_path", wav,
                             "--out", tmp_path / "emb.npz", *common], capsys)
    assert code == 0 and "3 files" in out
    code, out, _ = _run_cli(["score", "--embeddings", tmp_path / "emb.npz", "--test_list", trials,
                             "--save_scores", tmp_path / "score.txt"], capsys)
    assert code == 0 and out.startswith("EER ")
    expected = [float(l.split()[3]) for l in (tmp_path / "eval.txt").read_text().splitlines()]
    got = [float(l.split()[3]) for l in (tmp_path / "score.txt").read_text().splitlines()]
    np.testing.assert_allclose(got, expected, atol=1e-6)

    pytest.importorskip("kaldiio", reason="kaldiio (optional) is not installed")
    code, _, _ = _run_cli(["embed", "--dir", wav / "id10003", "--out", tmp_path / "emb.ark", *common], capsys)
    assert code == 0
    code, _, _ = _run_cli(["embed", "--dir", wav / "id10003", "--out", tmp_path / "dir.npz", *common], capsys)
    import kaldiio
    from_ark = dict(kaldiio.load_scp(str(tmp_path / "emb.scp")))
    with np.load(tmp_path / "dir.npz") as z:
        assert sorted(from_ark) == sorted(z["keys"]) == ["vidA/00001.wav", "vidA/00002.wav", "vidC/00003.wav"]
        for key, vector in zip(z["keys"], z["embeddings"]):
            np.testing.assert_array_equal(from_ark[key], vector)


def test_cli_score_refuses_cap_frames_and_missing_keys(reference_dir, tmp_path, capsys):
    wav = reference_dir / "wav"
    trials = tmp_path / "trials.txt"
    trials.write_text(f"1 {A} {B}\n0 {B} {SHORT}\n")
    code, _, _ = _run_cli(["embed", "--test_list", trials, "--test_path", wav, "--out", tmp_path / "cap.npz",
                           "--initial_model", reference_dir / "ResNetSE34L_CAP.model", "--model",
                           "ResNetSE34L", "--eval_frames", 20, "--num_eval", 1, "--no_progress",
                           "--nDataLoaderThread", 0], capsys)
    assert code == 0
    with np.load(tmp_path / "cap.npz") as z:
        assert z["frames"].shape == (3, 1, 128, 22 // 4 + 1)
    code, _, err = _run_cli(["score", "--embeddings", tmp_path / "cap.npz", "--test_list", trials], capsys)
    assert code == 2 and "pairwise" in err
    other = tmp_path / "other.txt"
    other.write_text(f"1 {A} id10009/x/00001.wav\n")
    np.savez(tmp_path / "tap.npz", keys=np.array([A]), embeddings=np.ones((1, 4), np.float32))
    code, _, err = _run_cli(["score", "--embeddings", tmp_path / "tap.npz", "--test_list", other], capsys)
    assert code == 2 and "id10009/x/00001.wav" in err
