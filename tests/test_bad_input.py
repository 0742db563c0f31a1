"""Bad input: each kind of broken or unusual audio through training, evaluation and the API;
list-file quirks; checkpoints that try to run code. Every case ends in a clear error that
names the file, or in a documented policy (docs/reliability.md) - never a silent wrong result.
"""
from __future__ import annotations

import os
import pickle
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from capsv import audio, faults
from capsv.api import SpeakerVerifier
from capsv.models.checkpoint import save_checkpoint
from capsv.cli import main as cli_main
from capsv.data.lists import ListError, read_train_list, read_trials
from capsv.errors import CapsvError
from capsv.evaluation.inputs import EvalInputError
from capsv.evaluation.pipeline import evaluate_list
from capsv.models import SpeakerNet
from capsv.train import train

from speech_like import make_corpus, write_train_list

SR = 16000
RNG = np.random.default_rng(0)
SPEECH = (RNG.standard_normal(SR) * 3000).astype(np.int16)     # 1 s of int16 samples


def _write_bad(path: Path, kind: str) -> None:
    full = path.with_suffix(".full")
    sf.write(full, SPEECH, SR, subtype="PCM_16", format="WAV")
    data = full.read_bytes()
    full.unlink()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "header_only":                   # a valid header declaring no samples
        sf.write(path, np.zeros(0, np.int16), SR, subtype="PCM_16")
    elif kind == "truncated":                     # a download cut after 1000 bytes of audio
        path.write_bytes(data[:44 + 1000])
    elif kind == "random_bytes":
        path.write_bytes(RNG.bytes(5000))
    elif kind == "rate_8k":
        sf.write(path, SPEECH, 8000, subtype="PCM_16")
    elif kind == "rate_44k":
        sf.write(path, np.resize(SPEECH, 44100), 44100, subtype="PCM_16")
    elif kind == "float_nan":
        sf.write(path, np.full(SR, np.nan, np.float32), SR, subtype="FLOAT")
    elif kind == "flac_body":                     # a good FLAC header, then noise: fails decoding
        sf.write(path, SPEECH, SR, format="FLAC")
        good = path.read_bytes()
        path.write_bytes(good[:2000] + np.random.default_rng(1).bytes(len(good) - 2000))


# kind -> what the error must say (besides the file's name)
BAD = {"empty": "cannot read audio", "header_only": "no audio samples",
       "truncated": "truncated WAV", "random_bytes": "cannot read audio",
       "rate_8k": "sample rate is 8000 Hz", "rate_44k": "sample rate is 44100 Hz",
       "float_nan": "NaN or infinite samples", "flac_body": "cannot read audio"}
# found only when the samples are decoded (the header is fine)
DECODE_TIME = ("float_nan", "flac_body")


def _name(kind: str) -> str:
    return f"{kind}.flac" if kind == "flac_body" else f"{kind}.wav"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Clean speakers, plus every bad file, plus a tiny TAP checkpoint."""
    root = tmp_path_factory.mktemp("bad_input")
    items = make_corpus(str(root / "audio"), 4, 2, seconds=(0.3, 0.5), seed=3)
    for kind in BAD:
        _write_bad(root / "audio" / _name(kind), kind)
    torch.manual_seed(0)
    save_checkpoint(str(root / "tap.model"), SpeakerNet("ResNetSE34L", "TAP", 32))
    return root, items


_VERIFIERS: dict = {}


def _verifier(root: Path) -> SpeakerVerifier:
    if root not in _VERIFIERS:
        _VERIFIERS[root] = SpeakerVerifier.from_checkpoint(str(root / "tap.model"), eval_frames=20,
                                                           num_eval=2)
    return _VERIFIERS[root]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def strict_for_rate_kinds(request, monkeypatch):
    """Other rates are resampled by default; --strict_audio keeps them refused (tested here)."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if str(params.get("kind", "")).startswith("rate_"):
        monkeypatch.setenv("CAPSV_STRICT_AUDIO", "1")


# ----------------------------------------------------------------- unusable files: 3 paths
@pytest.mark.parametrize("kind", BAD)
def test_bad_file_in_the_api_is_a_clear_error(corpus, kind):
    root, _ = corpus
    path = str(root / "audio" / _name(kind))
    with pytest.raises(CapsvError, match=BAD[kind]) as info:
        _verifier(root).embed(path)
    assert path in str(info.value)


def _trials(root: Path, items, bad: str | None) -> Path:
    a, b = items[0][1], items[2][1]         # speakers 0 and 1
    lines = [f"1 {a} {items[1][1]}", f"0 {a} {b}", f"1 {b} {items[3][1]}", f"0 {items[1][1]} {b}"]
    if bad:
        lines += [f"0 {a} {_name(bad)}", f"1 {_name(bad)} {b}"]
    path = root / f"trials_{bad}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", BAD)
def test_bad_file_in_evaluation_errors_or_is_skipped_with_its_trials(corpus, kind, workers,
                                                                     capsys):
    """Header problems are found before any work, decoding problems (DECODE_TIME) when the
    file is read, in a DataLoader worker or not: the same one-line error, or with skip the
    same result."""
    root, items = corpus
    net = _verifier(root).net
    trials = _trials(root, items, kind)
    expected = CapsvError if kind in DECODE_TIME else EvalInputError
    with pytest.raises(expected, match=f"{_name(kind)}: .*{BAD[kind]}") as info:
        evaluate_list(net, str(trials), str(root / "audio"), 20, 2, progress=False,
                      workers=workers)
    assert "Traceback" not in str(info.value) and "DataLoader" not in str(info.value)
    result = evaluate_list(net, str(trials), str(root / "audio"), 20, 2, progress=False,
                           on_bad_audio="skip", workers=workers)
    assert result.skipped_files == [_name(kind)] and result.skipped_trials == 2
    assert len(result.trials) == 4
    clean = evaluate_list(net, str(_trials(root, items, None)), str(root / "audio"), 20, 2,
                          progress=False)
    np.testing.assert_allclose(result.scores, clean.scores, rtol=1e-6)   # the rest unchanged
    assert "warning: skipping (--on_bad_audio skip)" in capsys.readouterr().out


def _train_cfg(root: Path, items, bad: str, save: Path, **over) -> dict:
    """4 speakers x 2 utterances; speaker 1's second utterance is the bad file."""
    listed = [(s, r) for s, r in items if r != items[3][1]] + [(items[3][0], _name(bad))]
    write_train_list(str(root / f"train_{bad}.txt"), listed)
    cfg = dict(model="ResNetSE34L", encoder_type="TAP", nOut=32, trainfunc="softmaxproto",
               nSpeakers=2, batch_size=2, max_frames=20, max_epoch=1, seed=1, optimizer="adam",
               lr=0.001, nDataLoaderThread=0, device="cpu", no_progress=True,
               train_list=str(root / f"train_{bad}.txt"), train_path=str(root / "audio"),
               save_path=str(save), strict_audio=bad.startswith("rate_"))
    cfg.update(over)
    return cfg


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", BAD)
def test_bad_file_in_training_errors_or_is_replaced(corpus, kind, workers, tmp_path, capsys):
    root, items = corpus
    faults.arm("")
    with pytest.raises(CapsvError, match=f"{_name(kind)}: .*{BAD[kind]}") as info:
        train(_train_cfg(root, items, kind, tmp_path / "err", nDataLoaderThread=workers))
    assert "Traceback" not in str(info.value) and "DataLoader" not in str(info.value)
    assert not list((tmp_path / "err" / "model").iterdir())
    summary = train(_train_cfg(root, items, kind, tmp_path / "skip", on_bad_audio="skip",
                               nDataLoaderThread=workers))
    assert summary.final_epoch == 1 and np.isfinite(summary.loss)
    out = capsys.readouterr().out
    assert "warning: skipping bad training file (--on_bad_audio skip): " in out and kind in out
    assert "skipped 1 bad training file(s)" in out


def test_skip_refuses_a_speaker_with_no_readable_file(corpus, tmp_path):
    root, items = corpus
    listed = items[:2] + [(items[2][0], "empty.wav"), (items[2][0], "truncated.wav")] + items[4:]
    write_train_list(str(root / "train_dead.txt"), listed)
    cfg = _train_cfg(root, items, "empty", tmp_path / "x", on_bad_audio="skip",
                     train_list=str(root / "train_dead.txt"))
    faults.arm("")
    with pytest.raises(CapsvError, match="every utterance of the speaker .* is unreadable"):
        train(cfg)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_skipped_training_files_are_counted_whatever_the_number_of_workers(corpus, tmp_path,
                                                                            capsys, workers):
    """Speakers 0-2 each have one bad file (always in their group of 2): with 0, 1 or 2
    DataLoader worker processes, the end-of-run line counts all 3, each warned once over
    2 epochs, and the summary names them."""
    root, items = corpus
    kinds = ["empty", "truncated", "random_bytes"]
    listed = [x for s in range(3) for x in (items[2 * s], (items[2 * s][0], f"{kinds[s]}.wav"))]
    write_train_list(str(root / "train_three_bad.txt"), listed + items[6:])
    cfg = _train_cfg(root, items, "empty", tmp_path / "run", on_bad_audio="skip", max_epoch=2,
                     train_list=str(root / "train_three_bad.txt"), nDataLoaderThread=workers)
    faults.arm("")
    summary = train(cfg)
    out = capsys.readouterr().out
    paths = sorted(str(root / "audio" / f"{kind}.wav") for kind in kinds)
    assert summary.skipped_files == paths
    assert f"skipped 3 bad training file(s) (--on_bad_audio skip): {', '.join(paths)}" in out
    assert out.count("warning: skipping bad training file") == 3
    assert all(path in out for path in paths)


# ----------------------------------------------------------------- usable but unusual files
def _write_ok(path: Path, kind: str) -> np.ndarray:
    """Write ``kind``; return the mono int16-scale samples a correct reader must return."""
    x = SPEECH.astype(np.float32)
    if kind == "stereo":
        other = np.roll(SPEECH, 7)
        sf.write(path, np.stack([SPEECH, other], 1), SR, subtype="PCM_16")
        return (x + other.astype(np.float32)) / 2
    if kind == "pcm24":
        sf.write(path, SPEECH.astype(np.float64) / 32768, SR, subtype="PCM_24")
        return x
    if kind == "float32":
        sf.write(path, x / 32768, SR, subtype="FLOAT")
        return x
    if kind == "short_0.05s":
        sf.write(path, SPEECH[:800], SR, subtype="PCM_16")
        return x[:800]
    if kind == "silence":
        sf.write(path, np.zeros(SR, np.int16), SR, subtype="PCM_16")
        return np.zeros(SR, np.float32)
    if kind == "clipped":
        clipped = np.clip(SPEECH.astype(np.int32) * 20, -32768, 32767).astype(np.int16)
        sf.write(path, clipped, SR, subtype="PCM_16")
        return clipped.astype(np.float32)
    raise ValueError(kind)


OK = ["stereo", "pcm24", "float32", "short_0.05s", "silence", "clipped"]


@pytest.mark.parametrize("kind", OK)
def test_unusual_but_valid_audio_keeps_the_int16_contract(corpus, tmp_path, kind):
    """Read exactly (int16 scale, stereo averaged with a warning), and a finite embedding
    through the API and the evaluation crops; short files are padded per spec §5."""
    root, _ = corpus
    path = tmp_path / f"{kind}.wav"
    expected = _write_ok(path, kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = audio.load_audio(str(path))
    assert any("downmixed to mono" in str(w.message) for w in caught) == (kind == "stereo")
    np.testing.assert_allclose(got, expected, atol=0.5 if kind == "stereo" else 0)
    crops = audio.load_eval_crops(str(path), 20, 2)
    assert crops.shape == (2, audio.crop_samples(20)) and np.isfinite(crops).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = _verifier(root).embed(str(path))
    assert np.isfinite(emb).all() and np.linalg.norm(emb) > 0
    if kind == "short_0.05s":     # 800 samples padded by 1320 on each side, not repeated
        assert (crops[0][:1320] == 0).all() and (crops[0][1320:2120] == expected).all()


def test_ten_minute_file_reads_only_its_crops(tmp_path):
    """Evaluation and training crops of a 10-minute file allocate a few crops, not the
    38 MB the decoded file would take, and equal the crops of the fully decoded file."""
    path = tmp_path / "long.wav"
    n = 10 * 60 * SR
    sf.write(path, np.resize(SPEECH, n), SR, subtype="PCM_16")
    tracemalloc.start()
    crops = audio.load_eval_crops(str(path), 350, 10)
    crop = audio.load_random_crop(str(path), 200, np.random.default_rng(0))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    decoded_bytes = n * 4
    assert peak < 4 * 2**20 < decoded_bytes / 9, peak          # numpy reports to tracemalloc
    np.testing.assert_array_equal(crops, audio.eval_crops(audio.load_audio(str(path)), 350, 10))
    assert crop.shape == (audio.crop_samples(200),)


def test_digital_silence_gives_finite_features():
    """All-zero input: the +1e-6 floor keeps log-mel finite (no -inf, no NaN after the
    instance norm), so the whole network gives a finite, non-zero embedding."""
    from capsv.models.features import LogMelFrontEnd

    feats = LogMelFrontEnd()(torch.zeros(2, audio.crop_samples(20)))
    assert torch.isfinite(feats).all()
    torch.manual_seed(0)
    net = SpeakerNet("ResNetSE34L", "CAP", 32).eval()
    with torch.no_grad():
        frames = net.frames(torch.zeros(2, audio.crop_samples(20)))
        e_s, e_q = net.pooling(frames[:1], frames[1:])
    assert torch.isfinite(e_s).all() and torch.isfinite(e_q).all()


# ----------------------------------------------------------------- list files
def test_crlf_bom_and_trailing_blank_lines_parse_like_a_clean_list(tmp_path):
    clean = tmp_path / "clean.txt"
    clean.write_text("1 a.wav b.wav\n0 a.wav c.wav\n")
    quirky = tmp_path / "quirky.txt"
    quirky.write_bytes(b"\xef\xbb\xbf1 a.wav b.wav\r\n0 a.wav c.wav\r\n\r\n\n")
    assert read_trials(str(quirky)) == read_trials(str(clean))
    train = tmp_path / "train.txt"
    train.write_bytes(b"\xef\xbb\xbfspk1 a.wav\r\nspk2 b.wav\r\n\r\n")
    assert read_train_list(str(train)) == [("spk1", "a.wav"), ("spk2", "b.wav")]


def test_duplicate_trials_are_rejected_with_both_lines(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_text("1 a.wav b.wav\n0 a.wav c.wav\n1 a.wav b.wav\n")
    with pytest.raises(ListError, match=r"dup.txt:3: .*repeats line 1"):
        read_trials(str(path))


def test_paths_with_spaces_need_tab_separated_lists(tmp_path):
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("1 my dir/a.wav my dir/b.wav\n")
    with pytest.raises(ListError, match=r"spaced.txt:1: expected 3 fields .*fields separated "
                                         r"with tabs"):
        read_trials(str(spaced))
    tabbed = tmp_path / "tabbed.txt"
    tabbed.write_text("1\tmy dir/a.wav\tmy dir/b.wav\n0\tmy dir/a.wav\tc.wav\n")
    assert [(t.path1, t.path2) for t in read_trials(str(tabbed))] == \
        [("my dir/a.wav", "my dir/b.wav"), ("my dir/a.wav", "c.wav")]
    train = tmp_path / "train.txt"
    train.write_text("id 1\tmy dir/a.wav\n")
    assert read_train_list(str(train)) == [("id 1", "my dir/a.wav")]


# ----------------------------------------------------------------- checkpoints that run code
class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def _evil_checkpoint(tmp_path: Path) -> Path:
    _Exploit.marker = str(tmp_path / "PWNED")
    path = tmp_path / "evil.model"
    with open(path, "wb") as f:
        pickle.dump({"__S__.conv1.weight": _Exploit()}, f)
    return path


@pytest.mark.parametrize("route", ["eval", "train_initial_model", "resume", "api", "export"])
def test_every_loading_path_refuses_a_code_running_checkpoint(corpus, tmp_path, route, capsys):
    root, items = corpus
    evil = _evil_checkpoint(tmp_path)
    if route == "api":
        with pytest.raises(CapsvError, match="refused to load"):
            SpeakerVerifier.from_checkpoint(str(evil))
    elif route == "eval":
        trials = _trials(root, items, None)
        rc = cli_main(["eval", "--initial_model", str(evil), "--model", "ResNetSE34L",
                       "--test_list", str(trials), "--test_path", str(root / "audio"),
                       "--no_progress"])
        assert rc == 2 and "refused to load" in capsys.readouterr().err
    elif route == "export":
        rc = cli_main(["export", "--initial_model", str(evil), "--out", str(tmp_path / "out")])
        assert rc == 2 and "refused to load" in capsys.readouterr().err
    else:
        faults.arm("")
        save = tmp_path / "run"
        cfg = _train_cfg(root, items, "header_only", save, on_bad_audio="skip")
        if route == "train_initial_model":
            with pytest.raises(CapsvError, match="refused to load"):
                train(dict(cfg, initial_model=str(evil)))
        else:       # a planted file in the run folder is skipped as unreadable, never run
            (save / "model").mkdir(parents=True)
            os.replace(evil, save / "model" / "model000000007.model")
            summary = train(cfg)
            assert summary.first_epoch == 1
            assert "skipping unreadable checkpoint" in capsys.readouterr().out
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------- archives
@pytest.mark.parametrize("bad", ["symlink", "hardlink", "dotdot", "absolute"])
def test_unsafe_tar_entry_is_refused(tmp_path, bad):
    """The zip cases live in test_voxceleb_prep.py::test_unsafe_zip_entry_is_refused."""
    import io
    import tarfile

    from capsv.prep.archive import ArchiveError, extract_tar

    archive = tmp_path / "musan.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        ok = tarfile.TarInfo("musan/noise/a.wav")
        ok.size = 5
        tf.addfile(ok, io.BytesIO(b"audio"))
        name = {"dotdot": "musan/../../evil.txt", "absolute": str(tmp_path / "evil.txt")}.get(
            bad, "musan/noise/evil.txt")
        info = tarfile.TarInfo(name)
        if bad == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif bad == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
        else:
            info.size = 6
        tf.addfile(info, io.BytesIO(b"gotcha") if info.isfile() else None)
    target = tmp_path / "out"
    with pytest.raises(ArchiveError, match="refused entry"):
        extract_tar(str(archive), str(target), progress=False)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                     if p.is_file() or p.is_symlink())
    assert written == ["musan.tar.gz", "out/musan/noise/a.wav"]

