"""The synthetic corpus: determinism, layout, lists, audio properties, re-runs and the CLI."""
from __future__ import annotations

import filecmp
import json
import os
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from capsv.cli import main as cli_main
from capsv.data.lists import read_train_list, read_trials
from capsv.prep.synth.corpus import (DONE, MANIFEST, QUICK_CORPUS, SPEAKER_TABLE, TEST, TRAIN_LIST,
                              TRIAL_LIST, CorpusConfig, SynthError, _lookalikes, generate_corpus,
                              plan_corpus, speaker_traits)
from capsv.prep.synth.voice import SpeakingState, draw_speaker, synth_dry

# Three train and three test speakers, four 1-1.5 s clips each: under a second to generate.
TINY = CorpusConfig(speakers=3, test_speakers=3, utterances=4, min_seconds=1.0, max_seconds=1.5,
                    min_sessions=2, max_sessions=3, trials=12, seed=7)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The CI preset, generated once (in-process)."""
    out = str(tmp_path_factory.mktemp("quick") / "corpus")
    summary = generate_corpus(QUICK_CORPUS, out, workers=1, progress=False)
    assert summary.status == "generated"
    return out


def tree_files(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def assert_same_tree(a: str, b: str) -> None:
    files = tree_files(a)
    assert files == tree_files(b)
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors, (mismatch[:5], errors[:5])


# --- determinism -----------------------------------------------------------------------------

def test_same_seed_same_bytes_with_one_or_two_workers(tmp_path):
    one = generate_corpus(TINY, str(tmp_path / "one"), workers=1, progress=False)
    two = generate_corpus(TINY, str(tmp_path / "two"), workers=2, progress=False)
    assert one.written_files == two.written_files == 24
    assert_same_tree(str(tmp_path / "one"), str(tmp_path / "two"))


def test_other_seed_other_audio(tmp_path):
    generate_corpus(TINY, str(tmp_path / "a"), workers=1, progress=False)
    generate_corpus(replace(TINY, seed=8), str(tmp_path / "b"), workers=1, progress=False)
    wav_a = next(f for f in tree_files(str(tmp_path / "a")) if f.endswith(".wav"))
    data_a, _ = sf.read(tmp_path / "a" / wav_a, dtype="int16")
    wav_b = next(f for f in tree_files(str(tmp_path / "b")) if f.endswith(".wav"))
    data_b, _ = sf.read(tmp_path / "b" / wav_b, dtype="int16")
    n = min(len(data_a), len(data_b))
    assert not np.array_equal(data_a[:n], data_b[:n])


def test_speaker_traits_do_not_depend_on_corpus_size():
    small, large = replace(TINY, speakers=2), replace(TINY, speakers=40)
    assert speaker_traits(small, TEST, 1).vector().tolist() == speaker_traits(large, TEST, 1).vector().tolist()


# --- lists -----------------------------------------------------------------------------------

def test_lists_parse_and_point_at_existing_files(quick):
    train = read_train_list(os.path.join(quick, TRAIN_LIST))
    trials = read_trials(os.path.join(quick, TRIAL_LIST))
    assert len(train) == QUICK_CORPUS.speakers * QUICK_CORPUS.utterances
    assert len(trials) == QUICK_CORPUS.trials
    for speaker, path in train:
        parts = path.split("/")
        assert len(parts) == 3 and parts[0] == speaker and parts[2].endswith(".wav")
        assert len(parts[1]) == 11 and parts[2][:-4].isdigit() and len(parts[2]) == 9
        assert os.path.isfile(os.path.join(quick, path))
    for t in trials:
        assert os.path.isfile(os.path.join(quick, t.path1)) and os.path.isfile(os.path.join(quick, t.path2))
    assert Counter(s for s, _ in train) == {s: QUICK_CORPUS.utterances for s in {s for s, _ in train}}


def test_train_and_test_speakers_are_disjoint(quick):
    train = {s for s, _ in read_train_list(os.path.join(quick, TRAIN_LIST))}
    trials = read_trials(os.path.join(quick, TRIAL_LIST))
    test = {p.split("/")[0] for t in trials for p in (t.path1, t.path2)}
    assert len(train) == QUICK_CORPUS.speakers and len(test) == QUICK_CORPUS.test_speakers
    assert not train & test


def test_trials_are_balanced_labelled_right_and_unique(quick):
    trials = read_trials(os.path.join(quick, TRIAL_LIST))
    labels = [t.label for t in trials]
    assert labels.count(1) == QUICK_CORPUS.trials // 2
    assert labels.count(0) == QUICK_CORPUS.trials - QUICK_CORPUS.trials // 2
    pairs = {frozenset((t.path1, t.path2)) for t in trials}
    assert len(pairs) == len(trials) and all(t.path1 != t.path2 for t in trials)
    for t in trials:
        assert t.label == int(t.path1.split("/")[0] == t.path2.split("/")[0])


def test_targets_mostly_cross_session_and_nontargets_often_lookalikes(quick):
    trials = read_trials(os.path.join(quick, TRIAL_LIST))
    targets = [t for t in trials if t.label == 1]
    cross = np.mean([t.path1.split("/")[1] != t.path2.split("/")[1] for t in targets])
    assert cross >= 0.75                        # 90 % expected (same_session_targets = 0.1)
    neighbours = _lookalikes(QUICK_CORPUS)
    index = {p.speaker: p.index for p in plan_corpus(QUICK_CORPUS) if p.role == TEST}
    hard = np.mean([index[t.path2.split("/")[0]] in neighbours[index[t.path1.split("/")[0]]]
                    or index[t.path1.split("/")[0]] in neighbours[index[t.path2.split("/")[0]]]
                    for t in trials if t.label == 0])
    assert hard >= QUICK_CORPUS.hard_nontargets - 0.1   # random pairs add more by chance


# --- audio -----------------------------------------------------------------------------------

def test_audio_is_16k_mono_int16_in_range_not_clipped_not_silent(quick):
    wavs = [f for f in tree_files(quick) if f.endswith(".wav")]
    assert len(wavs) == (QUICK_CORPUS.speakers + QUICK_CORPUS.test_speakers) * QUICK_CORPUS.utterances
    lengths = []
    for rel in wavs:
        info = sf.info(os.path.join(quick, rel))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "WAV", "PCM_16")
        data, _ = sf.read(os.path.join(quick, rel), dtype="int16")
        lengths.append(len(data) / 16000)
        peak = int(np.abs(data.astype(np.int32)).max())
        rms = float(np.sqrt(np.mean(data.astype(np.float64) ** 2)))
        assert peak <= int(0.9 * 32767) + 1, rel            # the generator's limiter
        assert rms > 150, rel                                 # quietest sessions are ~ -40 dBFS
    assert QUICK_CORPUS.min_seconds <= min(lengths) and max(lengths) <= QUICK_CORPUS.max_seconds
    assert max(lengths) - min(lengths) > 0.3 * (QUICK_CORPUS.max_seconds - QUICK_CORPUS.min_seconds)


def _median_f0(x: np.ndarray, sr: int = 16000) -> float:
    """Autocorrelation pitch of the louder 40 ms frames, median over frames."""
    frame = 640
    f0s, energies = [], []
    for start in range(0, len(x) - frame, frame // 2):
        seg = x[start:start + frame] - x[start:start + frame].mean()
        ac = np.correlate(seg, seg, "full")[frame - 1:]
        lo, hi = sr // 400, sr // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        f0s.append(sr / lag)
        energies.append(ac[0])
    keep = np.asarray(energies) >= np.median(energies)
    return float(np.median(np.asarray(f0s)[keep]))


def test_voice_pitch_follows_the_speaker_trait():
    traits = draw_speaker(np.random.default_rng(3))
    low = synth_dry(replace(traits, f0_hz=100.0), SpeakingState(), 48000, np.random.default_rng(0))
    high = synth_dry(replace(traits, f0_hz=200.0), SpeakingState(), 48000, np.random.default_rng(0))
    ratio = _median_f0(high) / _median_f0(low)
    assert 1.6 < ratio < 2.5                    # an octave, give or take the intonation


# --- output folder: manifest, no-op re-run, resume, refusals ----------------------------------

def test_rerun_is_a_noop_and_other_settings_are_refused(tmp_path):
    out = str(tmp_path / "c")
    generate_corpus(TINY, out, workers=1, progress=False)
    with open(os.path.join(out, MANIFEST)) as f:
        assert json.load(f)["config"]["seed"] == TINY.seed
    assert os.path.isfile(os.path.join(out, DONE)) and os.path.isfile(os.path.join(out, SPEAKER_TABLE))
    stamps = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in tree_files(out)}
    again = generate_corpus(TINY, out, workers=2, progress=False)   # workers are not a setting
    assert again.status == "done" and again.written_files == 0
    assert stamps == {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in tree_files(out)}
    with pytest.raises(SynthError, match=r"other settings.*utterances: 4 -> 5"):
        generate_corpus(replace(TINY, utterances=5), out, workers=1, progress=False)


def test_interrupted_run_is_finished_identically(tmp_path):
    ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
    generate_corpus(TINY, ref, workers=1, progress=False)
    generate_corpus(TINY, out, workers=1, progress=False)
    wavs = [f for f in tree_files(out) if f.endswith(".wav")]
    for rel in wavs[:5]:                          # as if killed before these were written
        os.unlink(os.path.join(out, rel))
    os.unlink(os.path.join(out, DONE))
    leftover = os.path.join(out, os.path.dirname(wavs[0]), ".00001.wav.abc123.tmp")
    with open(leftover, "wb") as f:
        f.write(b"half a file")
    summary = generate_corpus(TINY, out, workers=1, progress=False)
    assert summary.status == "generated" and summary.written_files == 5
    assert not os.path.exists(leftover)
    assert_same_tree(ref, out)


def test_foreign_nonempty_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match="not empty"):
        generate_corpus(TINY, str(tmp_path), workers=1, progress=False)


def test_impossible_settings_fail_before_writing(tmp_path):
    with pytest.raises(SynthError, match="lower --trials"):
        generate_corpus(replace(TINY, trials=1000), str(tmp_path / "x"), progress=False)
    with pytest.raises(SynthError, match="min_seconds"):
        generate_corpus(replace(TINY, min_seconds=3.0, max_seconds=2.0), str(tmp_path / "x"))
    # One clip per session leaves no same-session pair to draw.
    one_per_session = replace(TINY, utterances=2, min_sessions=2, max_sessions=2, trials=2,
                              same_session_targets=1.0)
    with pytest.raises(SynthError, match="distinct target pairs"):
        generate_corpus(one_per_session, str(tmp_path / "x"), progress=False)
    assert not (tmp_path / "x").exists()


# --- command line ----------------------------------------------------------------------------

TINY_FLAGS = ["--speakers", "3", "--test_speakers", "3", "--utterances", "4", "--min_seconds", "1",
              "--max_seconds", "1.5", "--min_sessions", "2", "--max_sessions", "3", "--trials", "12",
              "--seed", "7", "--workers", "1", "--no_progress"]


def test_cli_generates_reruns_and_refuses(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert cli_main(["synth", "--out", out] + TINY_FLAGS) == 0
    assert "wrote 24 clips" in capsys.readouterr().out
    ref = str(tmp_path / "lib")
    generate_corpus(TINY, ref, workers=1, progress=False)
    assert_same_tree(ref, out)                   # the flags map onto the same settings
    assert cli_main(["synth", "--out", out] + TINY_FLAGS) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert cli_main(["synth", "--out", out] + TINY_FLAGS[:-5] + ["--seed", "9", "--workers", "1", "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("capsv synth: error:") and "seed: 7 -> 9" in err and "Traceback" not in err
