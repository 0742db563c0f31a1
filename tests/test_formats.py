"""Real-world audio in: every common format, rate and channel count, through eval, verify,
embed and the Python API, against the same audio converted to 16 kHz beforehand.

One 2 s recording of the reference fixtures is written, with soundfile and PyAV, as 8, 22.05,
44.1 and 48 kHz WAV, stereo WAV, FLAC, OGG/Vorbis, OGG/Opus, MP3 and m4a/AAC. Each file's
"converted beforehand" twin is what ``capsv prepare --convert`` does to it
(:func:`capsv.prep.convert.decode_to_16k_mono`, written as a 16 kHz WAV). Every command must
score the file within 0.02 of its twin (against the same 16 kHz partner file), and say once
that it resampled it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from capsv import cli
from capsv.api import SpeakerVerifier
from capsv.audio import ResampledAudioWarning, resample, write_m4a
from capsv.prep.convert import decode_to_16k_mono, write_wav_atomic

SOURCE = "id10003/vidA/00001.wav"     # 3.0 s; its first 2 s are used
PARTNER = "id10003/vidA/00002.wav"    # same speaker, 16 kHz: the other side of every trial
PROTOCOL = ["--eval_frames", "100", "--num_eval", "3"]


def assert_close_scores(got: float, expected: float) -> None:
    """Within 0.02 (the issue's bound), and, because the fixture's models have random
    weights whose scores all sit near 1, within 2 % of the distance 1 - score too (scoring
    44.1 kHz audio as if it were 16 kHz is off by 70 % of it)."""
    assert abs(got - expected) <= 0.02, (got, expected)
    assert abs(got - expected) <= 0.02 * (1 - expected), (got, expected)

# name -> (rate, how soundfile writes it; None: PyAV's AAC encoder)
FORMATS = {
    "w8k.wav": (8000, dict(subtype="PCM_16")),
    "w22k.wav": (22050, dict(subtype="PCM_16")),
    "w44k.wav": (44100, dict(subtype="PCM_16")),
    "w48k.wav": (48000, dict(subtype="PCM_24")),
    "stereo44k.wav": (44100, dict(subtype="FLOAT")),
    "f44k.flac": (44100, dict(format="FLAC")),
    "v44k.ogg": (44100, dict(format="OGG", subtype="VORBIS")),
    "o48k.opus": (48000, dict(format="OGG", subtype="OPUS")),
    "m44k.mp3": (44100, dict(format="MP3", subtype="MPEG_LAYER_III")),
    "a44k.m4a": (44100, None),
}
# The default suite runs one file per decoding path (soundfile + resampler, stereo, PyAV for
# Opus, MP3 and AAC); `-m slow` adds the other rates and containers (the whole matrix takes
# about a minute on 2 shared cores).
FAST = ("w44k.wav", "stereo44k.wav", "o48k.opus", "m44k.mp3", "a44k.m4a")
MATRIX = [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in FORMATS]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(reference_dir, tmp_path_factory):
    """root/<format file>, root/converted/<name>.wav (its 16 kHz twin), root/partner.wav."""
    root = tmp_path_factory.mktemp("formats")
    (root / "converted").mkdir()
    speech, rate = sf.read(reference_dir / "wav" / SOURCE, dtype="float32")
    speech = speech[:2 * rate]
    partner, _ = sf.read(reference_dir / "wav" / PARTNER, dtype="int16")
    sf.write(root / "partner.wav", partner, 16000, subtype="PCM_16")
    for name, (target, how) in FORMATS.items():
        wave = resample(speech, 16000, target)
        if name.startswith("stereo"):
            wave = np.stack([wave, 0.5 * wave], axis=1)
        if how is None:
            write_m4a(root / name, wave, target)
        else:
            sf.write(root / name, wave, target, **how)
        write_wav_atomic(str(root / "converted" / (name + ".wav")), decode_to_16k_mono(str(root / name)))
    return root


@pytest.fixture(scope="module")
def tap_model(reference_dir):
    return str(reference_dir / "ResNetSE34L_TAP.model")


def _fresh_copy(corpus, name, tmp_path):
    """The file under a new path: the resampling warning is once per file and process."""
    target = tmp_path / name
    target.write_bytes((corpus / name).read_bytes())
    return target


def _run(argv, capsys):
    """cli.main in this process: (exit code, stdout, stderr, the warnings it gave). In a
    real process the warnings are 'capsv <command>: warning: ...' lines on stderr (tested
    below); here pytest collects them, so they are recorded instead."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err, [str(w.message) for w in caught]


def _resample_warnings(messages: list[str]) -> list[str]:
    return [m for m in messages if "resampled to 16000 Hz" in m]


@pytest.mark.parametrize("name", MATRIX)
def test_api_scores_any_format_like_its_16k_conversion(corpus, reference_dir, tmp_path, name):
    sv = SpeakerVerifier.from_checkpoint(reference_dir / "ResNetSE34L_TAP.model",
                                         model="ResNetSE34L", eval_frames=100, num_eval=3,
                                         device="cpu")
    path = _fresh_copy(corpus, name, tmp_path)
    partner, converted = corpus / "partner.wav", corpus / "converted" / (name + ".wav")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, expected = sv.score_pairs([(path, partner), (converted, partner)])
    assert_close_scores(got, expected)
    rate_warnings = [w for w in caught if issubclass(w.category, ResampledAudioWarning)]
    assert len(rate_warnings) == 1 and f"{FORMATS[name][0]} Hz" in str(rate_warnings[0].message)


@pytest.mark.parametrize("name", MATRIX)
def test_eval_scores_any_format_like_its_16k_conversion(corpus, tap_model, tmp_path, capsys, name):
    path = _fresh_copy(corpus, name, tmp_path)
    (tmp_path / "converted.wav").write_bytes((corpus / "converted" / (name + ".wav")).read_bytes())
    (tmp_path / "partner.wav").write_bytes((corpus / "partner.wav").read_bytes())
    trials = tmp_path / "trials.txt"
    trials.write_text(f"1 {path.name} partner.wav\n0 converted.wav partner.wav\n")
    code, _, err, said = _run(["eval", "--initial_model", tap_model, "--model", "ResNetSE34L",
                               *PROTOCOL, "--test_list", trials, "--test_path", tmp_path,
                               "--save_scores", tmp_path / "scores.txt", "--nDataLoaderThread",
                               "0", "--no_progress", "--device", "cpu"], capsys)
    assert code == 0, err
    got, expected = (float(l.split()[3]) for l in (tmp_path / "scores.txt").read_text().splitlines())
    assert_close_scores(got, expected)
    rate = _resample_warnings(said)
    assert len(rate) == 1 and rate[0].startswith(f"{path}: sample rate {FORMATS[name][0]} Hz")


@pytest.mark.parametrize("name", MATRIX)
def test_verify_scores_any_format_like_its_16k_conversion(corpus, tap_model, tmp_path, capsys, name):
    path = _fresh_copy(corpus, name, tmp_path)
    scores = []
    for first in (path, corpus / "converted" / (name + ".wav")):
        code, out, err, said = _run(["verify", first, corpus / "partner.wav", "--initial_model",
                                     tap_model, "--model", "ResNetSE34L", *PROTOCOL,
                                     "--device", "cpu"], capsys)
        assert code == 0, err
        scores.append(float(out.split()[1]))
        rate = _resample_warnings(said)
        assert len(rate) == (first == path)
        assert first != path or f"sample rate {FORMATS[name][0]} Hz" in rate[0]
    assert_close_scores(*scores)


@pytest.mark.parametrize("name", MATRIX)
def test_embed_any_format_like_its_16k_conversion(corpus, tap_model, tmp_path, capsys, name):
    path = _fresh_copy(corpus, name, tmp_path)
    (tmp_path / "converted.wav").write_bytes((corpus / "converted" / (name + ".wav")).read_bytes())
    (tmp_path / "partner.wav").write_bytes((corpus / "partner.wav").read_bytes())
    (tmp_path / "files.txt").write_text(f"{path.name}\nconverted.wav\npartner.wav\n")
    code, _, err, said = _run(["embed", "--initial_model", tap_model, "--model", "ResNetSE34L",
                               *PROTOCOL, "--test_list", tmp_path / "files.txt", "--test_path",
                               tmp_path, "--out", tmp_path / "emb.npz", "--nDataLoaderThread",
                               "0", "--no_progress", "--device", "cpu"], capsys)
    assert code == 0, err
    assert len(_resample_warnings(said)) == 1
    with np.load(tmp_path / "emb.npz") as z:
        emb, norms = z["embeddings"].astype(np.float64), z["norms"].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    scores = (emb[:2] @ emb[2]) * norms[:2] * norms[2]        # capsv score's rule
    assert_close_scores(*scores)


def test_embed_dir_finds_every_format(corpus, tap_model, tmp_path, capsys):
    for name in FORMATS:
        (tmp_path / name).write_bytes((corpus / name).read_bytes())
    code = cli.main(["embed", "--initial_model", tap_model, "--model", "ResNetSE34L",
                     "--eval_frames", "20", "--num_eval", "1", "--dir", str(tmp_path),
                     "--out", str(tmp_path / "emb.npz"), "--nDataLoaderThread", "0",
                     "--no_progress", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    with np.load(tmp_path / "emb.npz") as z:
        assert sorted(z["keys"]) == sorted(FORMATS)


def test_cli_subprocess_mp3_and_44k_wav_one_clean_warning_each(corpus, tap_model):
    """A real process: MP3 decoding prints no decoder 'error:' lines, each file is warned
    about once in one plain line, and the exit status is 0."""
    done = subprocess.run([sys.executable, "-m", "capsv.cli", "verify", str(corpus / "m44k.mp3"),
                           str(corpus / "w44k.wav"), "--initial_model", tap_model, "--model",
                           "ResNetSE34L", *PROTOCOL, "--threshold", "0.5", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("score ") and "decision " in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and all(l.startswith("capsv verify: warning: ") for l in lines), lines
    assert "m44k.mp3: sample rate 44100 Hz" in lines[0] and "w44k.wav: sample rate 44100 Hz" in lines[1]
    assert "error" not in done.stderr.lower()


def test_strict_audio_keeps_the_refusal(corpus, tap_model, capsys):
    code = cli.main(["verify", str(corpus / "w48k.wav"), str(corpus / "partner.wav"),
                     "--initial_model", tap_model, "--model", "ResNetSE34L", "--strict_audio"])
    err = capsys.readouterr().err
    assert code == 2 and "w48k.wav: sample rate is 48000 Hz, expected 16000 Hz (--strict_audio)" in err


def test_api_arrays_take_their_sample_rate(corpus, reference_dir):
    sv = SpeakerVerifier.from_checkpoint(reference_dir / "ResNetSE34L_TAP.model",
                                         model="ResNetSE34L", eval_frames=100, num_eval=3,
                                         device="cpu")
    wave44, _ = sf.read(corpus / "w44k.wav", dtype="int16")
    partner = corpus / "partner.wav"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResampledAudioWarning)
        from_file = sv.score(corpus / "w44k.wav", partner)
    assert sv.score(wave44, partner, sample_rate=44100) == pytest.approx(from_file, abs=1e-5)
    assert sv.score((wave44, 44100), partner) == pytest.approx(from_file, abs=1e-5)
    as_if_16k = sv.score(wave44, partner, sample_rate=16000)   # what used to happen silently
    assert abs(as_if_16k - from_file) > 0.3 * (1 - from_file)


def test_short_inputs_warn_in_verify_embed_and_api(corpus, tap_model, reference_dir, tmp_path, capsys):
    short = tmp_path / "short.wav"
    sf.write(short, (np.random.default_rng(0).standard_normal(1600) * 3000).astype(np.int16), 16000)
    partner = str(corpus / "partner.wav")
    code, _, _, said = _run(["verify", short, partner, "--initial_model", tap_model, "--model",
                             "ResNetSE34L", "--device", "cpu"], capsys)
    assert code == 0
    short_notes = [m for m in said if "shorter than one" in m]
    assert len(short_notes) == 1
    assert short_notes[0].startswith("1 of 2 inputs are shorter than one --eval_frames 350 crop")
    assert "--eval_frames 0 scores whole utterances" in short_notes[0]
    (tmp_path / "list.txt").write_text(f"{short}\n{partner}\n")
    code = cli.main(["embed", "--initial_model", tap_model, "--model", "ResNetSE34L",
                     "--test_list", str(tmp_path / "list.txt"), "--out", str(tmp_path / "e.npz"),
                     "--nDataLoaderThread", "0", "--no_progress", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "1 of 2 files in " in out and "--eval_frames 0" in out
    sv = SpeakerVerifier.from_checkpoint(tap_model, model="ResNetSE34L", device="cpu",
                                         sample_rate=16000)
    tone = np.ones(1600, np.int16) * 1000
    with pytest.warns(UserWarning, match="100% of the inputs are shorter than one --eval_frames "
                                         "350 crop .*: scoring whole utterances instead"):
        auto = sv.embed(tone)
    whole = SpeakerVerifier.from_checkpoint(tap_model, model="ResNetSE34L", device="cpu",
                                            sample_rate=16000, eval_frames=0).embed(tone)
    np.testing.assert_allclose(auto, whole, rtol=1e-5, atol=1e-6)
    padded = SpeakerVerifier(sv.net, device="cpu", sample_rate=16000, eval_short="pad")
    with pytest.warns(UserWarning, match="1 of 1 inputs are shorter than one --eval_frames 350"):
        assert not np.allclose(padded.embed(tone), whole, atol=1e-3)


# ------------------------------------------------------------------ one config, Kaldi, training
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ResNetSE34L_TAP.yaml"


def test_training_config_works_for_eval_verify_embed_and_export(corpus, tap_model, tmp_path, capsys):
    """configs/ResNetSE34L_TAP.yaml (trainfunc, lr, batch_size ...) supplies the model flags
    to every command; the training-only keys are ignored with one note."""
    partner = corpus / "partner.wav"
    (tmp_path / "trials.txt").write_text("1 partner.wav w44k.wav\n0 partner.wav f44k.flac\n")
    fast = ["--eval_frames", "20", "--num_eval", "1"]
    runs = {
        "eval": ["--test_list", tmp_path / "trials.txt", "--test_path", corpus,
                 "--nDataLoaderThread", "0", "--no_progress", *fast],
        "verify": [partner, corpus / "w44k.wav", *fast],
        "embed": ["--test_list", tmp_path / "trials.txt", "--test_path", corpus,
                  "--out", tmp_path / "e.npz", "--nDataLoaderThread", "0", "--no_progress", *fast],
        "export": ["--format", "torchscript", "--out", tmp_path / "ts", "--no_check", *fast],
    }
    for command, extra in runs.items():
        code, _, err, _ = _run([command, "--config", CONFIG, "--initial_model", tap_model, *extra], capsys)
        assert code == 0, (command, err)
        notes = [l for l in err.splitlines() if l.startswith("note: ")]
        assert len(notes) == 1 and "trainfunc" in notes[0] and "lr" in notes[0], (command, err)
    (tmp_path / "bad.yaml").write_text("no_such_flag: 1\n")
    code, _, err, _ = _run(["verify", partner, partner, "--config", tmp_path / "bad.yaml",
                            "--initial_model", tap_model], capsys)
    assert code == 2 and "unknown key 'no_such_flag'" in err


def test_wav_scp_in_utterance_ids_out_and_score_reproduces_eval(corpus, tap_model, tmp_path, capsys):
    pytest.importorskip("kaldiio", reason="kaldiio (optional) is not installed")
    (tmp_path / "wav.scp").write_text(f"spkA-utt1 {corpus / 'w44k.wav'}\n"
                                      f"spkA-utt2 partner.wav\nspkB-utt1 m44k.mp3\n")
    common = ["--initial_model", tap_model, "--model", "ResNetSE34L", *PROTOCOL,
              "--nDataLoaderThread", "0", "--no_progress", "--device", "cpu"]
    code, out, err, _ = _run(["embed", "--wav_scp", tmp_path / "wav.scp", "--test_path", corpus,
                              "--out", tmp_path / "x.ark", *common], capsys)
    assert code == 0, err
    assert "x.norms" in out
    import kaldiio
    stored = dict(kaldiio.load_scp(str(tmp_path / "x.scp")))
    assert sorted(stored) == ["spkA-utt1", "spkA-utt2", "spkB-utt1"]
    np.testing.assert_allclose([np.linalg.norm(v) for v in stored.values()], 1.0, atol=1e-5)
    # capsv score from the ark (+ x.norms) equals capsv eval on the same files
    (tmp_path / "utt_trials.txt").write_text("1 spkA-utt1 spkA-utt2\n0 spkA-utt2 spkB-utt1\n")
    code, _, err, _ = _run(["score", "--embeddings", tmp_path / "x.scp", "--test_list",
                            tmp_path / "utt_trials.txt", "--save_scores", tmp_path / "s.txt"], capsys)
    assert code == 0, err
    (tmp_path / "path_trials.txt").write_text(f"1 w44k.wav partner.wav\n0 partner.wav m44k.mp3\n")
    code, _, err, _ = _run(["eval", "--test_list", tmp_path / "path_trials.txt", "--test_path",
                            corpus, "--save_scores", tmp_path / "e.txt", *common], capsys)
    assert code == 0, err
    from_score = [float(l.split()[3]) for l in (tmp_path / "s.txt").read_text().splitlines()]
    from_eval = [float(l.split()[3]) for l in (tmp_path / "e.txt").read_text().splitlines()]
    np.testing.assert_allclose(from_score, from_eval, atol=1e-5)
    (tmp_path / "piped.scp").write_text("u1 sox a.wav -t wav - |\n")
    code, _, err, _ = _run(["embed", "--wav_scp", tmp_path / "piped.scp", "--out",
                            tmp_path / "p.npz", *common], capsys)
    assert code == 2 and "piped.scp:1: u1 is a command" in err


def test_training_reads_44k_files_and_reports_the_cost(tmp_path, capsys):
    """44.1 kHz WAVs listed by a Kaldi data directory (wav.scp + utt2spk as --train_list)
    train (crops resampled on the fly, the same crop as the whole file resampled), and the
    log notes the rate and the measured cost per crop."""
    from capsv.audio import load_audio, load_random_crop
    from capsv.train import train
    sys.path.insert(0, str(Path(__file__).parent))
    from speech_like import make_corpus

    items = make_corpus(str(tmp_path / "a16"), 4, 2, seconds=(0.6, 0.9), seed=5)
    for _, rel in items:                       # the same corpus at 44.1 kHz
        wave, _ = sf.read(tmp_path / "a16" / rel, dtype="float32")
        os.makedirs(tmp_path / "a44" / os.path.dirname(rel), exist_ok=True)
        sf.write(tmp_path / "a44" / rel, resample(wave, 16000, 44100), 44100, subtype="PCM_16")
    path = str(tmp_path / "a44" / items[0][1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResampledAudioWarning)
        whole = load_audio(path)
    crop = load_random_crop(path, 20, np.random.default_rng(3))
    start = int(np.random.default_rng(3).random() * (len(whole) - len(crop)))
    np.testing.assert_allclose(crop, whole[start:start + len(crop)], atol=1e-3)
    kaldi = tmp_path / "data_train"
    kaldi.mkdir()
    utts = [(f"{spk}-{i}", spk, rel) for i, (spk, rel) in enumerate(items)]
    (kaldi / "wav.scp").write_text("".join(f"{u} {rel}\n" for u, _, rel in utts))
    (kaldi / "utt2spk").write_text("".join(f"{u} {spk}\n" for u, spk, _ in utts))
    summary = train(dict(model="ResNetSE34L", encoder_type="TAP", nOut=32, trainfunc="softmaxproto",
                         nSpeakers=2, batch_size=2, max_frames=20, max_epoch=1, seed=1,
                         optimizer="adam", lr=0.001, nDataLoaderThread=0, device="cpu",
                         no_progress=True, train_list=str(kaldi),
                         train_path=str(tmp_path / "a44"), save_path=str(tmp_path / "run")))
    assert summary.final_epoch == 1 and np.isfinite(summary.loss)
    out = capsys.readouterr().out
    assert "sampled training files are not 16 kHz WAV/FLAC (44100 Hz" in out
    assert "ms per crop measured here" in out and "Converting them once" in out
    assert f"8 utterances of 4 speakers from {kaldi}" in out


def test_help_and_defaults_say_what_the_commands_do(capsys):
    """embed's --out is required in its usage; verify's help describes 'decision none';
    verify, the API, eval and embed all default to --device auto."""
    import inspect
    for command in ("embed", "verify", "eval"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert "(default: auto)" in " ".join(text.split()), command
        if command == "embed":
            assert " --out OUT" in text and "[--out OUT]" not in text
        if command == "verify":
            assert "'decision none (...)'" in text and "--strict_audio" in text
    for function in (SpeakerVerifier.__init__, SpeakerVerifier.from_checkpoint):
        assert inspect.signature(function).parameters["device"].default == "auto"
