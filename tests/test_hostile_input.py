"""Hostile and broken input through the real command line: files that try to run code,
paths that name the same file twice, disks that are full or read-only, lists that are not
UTF-8, archives cut short. Every case either works or ends in one line on stderr that names
the file, exit status 2, and no traceback (docs/reliability.md lists each case).

Each CLI case runs ``python -m capsv.cli`` in a real subprocess (with a timeout): what is
tested is the process's exit status and stderr, as a user or a script sees them.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from speech_like import make_corpus, write_trials

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120


def capsv(*argv: str, cwd: Path | None = None, env: dict | None = None,
          preexec_fn=None) -> subprocess.CompletedProcess:
    """Run ``python -m capsv.cli argv`` with this checkout's source first on the path."""
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]), **(env or {}))
    return subprocess.run([sys.executable, "-m", "capsv.cli", *map(str, argv)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd,
                          env=full_env, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, no traceback, and a single ``error:`` line holding every needle."""
    err = result.stderr
    assert "Traceback" not in err, err
    assert result.returncode == 2, (result.returncode, err)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, err
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    return errors[0]


# ----------------------------------------------------------------- Kaldi embeddings
class _RunsCode:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def kaldi_dir(tmp_path_factory) -> Path:
    """Two keys' embeddings written by kaldiio (binary ark + scp), and a trial list on them."""
    kaldiio = pytest.importorskip("kaldiio")
    root = tmp_path_factory.mktemp("kaldi")
    rng = np.random.default_rng(0)
    with kaldiio.WriteHelper(f"ark,scp:{root / 'emb.ark'},{root / 'emb.scp'}") as writer:
        for key in ("a.wav", "b.wav", "c.wav"):
            vector = rng.standard_normal(8).astype(np.float32)
            writer(key, vector / np.linalg.norm(vector))
    (root / "trials.txt").write_text("1 a.wav b.wav\n0 a.wav c.wav\n")
    return root


def test_kaldi_files_of_every_plain_type_read_like_kaldiio(tmp_path):
    """float/double vectors and matrices, binary and text, by ark and by scp: the same keys
    and values kaldiio reads."""
    kaldiio = pytest.importorskip("kaldiio")
    from capsv import kaldi_io

    rng = np.random.default_rng(1)
    values = {"fv": rng.standard_normal(5).astype(np.float32),
              "dv": rng.standard_normal(4),
              "fm": rng.standard_normal((2, 3)).astype(np.float32),
              "dm": rng.standard_normal((3, 2))}
    for spec, name in (("ark,scp:{0}.ark,{0}.scp", "bin"), ("ark,t,scp:{0}.ark,{0}.scp", "text")):
        with kaldiio.WriteHelper(spec.format(tmp_path / name)) as writer:
            for key, value in values.items():
                writer(key, value)
        for path in (tmp_path / f"{name}.ark", tmp_path / f"{name}.scp"):
            read = kaldi_io.read_scp if path.suffix == ".scp" else kaldi_io.read_ark
            got = read(str(path))
            expected = (list(kaldiio.load_scp(str(path)).items()) if path.suffix == ".scp"
                        else list(kaldiio.load_ark(str(path))))
            assert [k for k, _ in got] == [k for k, _ in expected] == list(values)
            for (_, a), (_, b) in zip(got, expected):
                np.testing.assert_allclose(a, b, rtol=1e-6)


def test_capsv_score_reads_a_kaldi_scp(kaldi_dir, tmp_path):
    out = capsv("score", "--embeddings", kaldi_dir / "emb.scp", "--test_list",
                kaldi_dir / "trials.txt", "--save_scores", tmp_path / "s.txt")
    assert out.returncode == 0, out.stderr
    assert "EER" in out.stdout and len((tmp_path / "s.txt").read_text().splitlines()) == 2


def test_a_pickled_ark_entry_is_refused_and_never_run(kaldi_dir, tmp_path):
    """kaldiio's ``PKL`` entry type is ``pickle.load``: refused, the payload never runs."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ark"
    evil.write_bytes((kaldi_dir / "emb.ark").read_bytes() + b"c.wav PKL"
                     + pickle.dumps(_RunsCode(marker)))
    out = capsv("score", "--embeddings", evil, "--test_list", kaldi_dir / "trials.txt")
    assert not marker.exists(), "the pickled payload ran"
    assert_one_line_error(out, str(evil), "entry 4", "pickled")


@pytest.mark.parametrize("value", ["touch {marker} |", "| touch {marker}", "-"])
def test_an_scp_command_or_stdin_is_refused_and_never_run(kaldi_dir, tmp_path, value):
    """An scp value ending in '|' is a shell command to kaldiio; '-' is standard input."""
    marker = tmp_path / "PWNED"
    scp = tmp_path / "evil.scp"
    first = (kaldi_dir / "emb.scp").read_text().splitlines()[0]
    scp.write_text(f"{first}\nb.wav {value.format(marker=marker)}\n")
    out = capsv("score", "--embeddings", scp, "--test_list", kaldi_dir / "trials.txt")
    assert not marker.exists(), "the scp command ran"
    assert_one_line_error(out, f"{scp}:2")


# ----------------------------------------------------------------- silent wrong results
def _wav_with_list_chunk(path: Path, samples: np.ndarray, list_bytes: int, keep: int | None):
    """A 16 kHz PCM16 WAV whose ``data`` chunk sits behind a LIST chunk of ``list_bytes``;
    cut to ``keep`` bytes of audio when given (a download that stopped early)."""
    import struct

    body = samples.astype("<i2").tobytes()
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16)
    info = b"LIST" + struct.pack("<I", list_bytes) + b"INFO" + b"\0" * (list_bytes - 4)
    data = b"data" + struct.pack("<I", len(body)) + body
    riff = b"WAVE" + fmt + info + data
    raw = b"RIFF" + struct.pack("<I", len(riff)) + riff
    if keep is not None:
        raw = raw[:len(raw) - len(body) + keep]
    path.write_bytes(raw)


@pytest.mark.parametrize("list_bytes", [8 * 1024, 100 * 1024])
def test_a_truncated_wav_is_caught_wherever_its_data_chunk_starts(tmp_path, list_bytes):
    """A data chunk after byte 4096 (behind an 8 KB LIST chunk) or after the 64 KB the crop
    reader parses: a cut file is an error in every reader, a complete one reads exactly."""
    from capsv import audio

    samples = (np.random.default_rng(0).standard_normal(16000) * 3000).astype(np.int16)
    whole, cut = tmp_path / "whole.wav", tmp_path / "cut.wav"
    _wav_with_list_chunk(whole, samples, list_bytes, None)
    _wav_with_list_chunk(cut, samples, list_bytes, keep=4000)
    np.testing.assert_array_equal(audio.load_audio(str(whole)), samples.astype(np.float32))
    readers = {"load_audio": lambda p: audio.load_audio(p),
               "load_eval_crops": lambda p: audio.load_eval_crops(p, 20, 2),
               "load_random_crop": lambda p: audio.load_random_crop(p, 20,
                                                                    np.random.default_rng(0)),
               "audio_info": lambda p: audio.audio_info(p)}
    for name, read in readers.items():
        read(str(whole))
        with pytest.raises(audio.AudioError, match="truncated WAV: the header declares 32000 "
                                                   "bytes of audio but the file holds 4000"):
            read(str(cut))


@pytest.mark.parametrize("repeat", ["1 ./a.wav b.wav", "1 x/../a.wav b.wav", "0 b.wav a.wav",
                                    "1 a.wav .//b.wav"])
def test_a_trial_repeated_under_another_spelling_or_order_is_refused(tmp_path, repeat):
    from capsv.data.lists import ListError, read_trials

    path = tmp_path / "trials.txt"
    path.write_text(f"1 a.wav b.wav\n0 a.wav c.wav\n{repeat}\n")
    with pytest.raises(ListError, match=r"trials.txt:3: the trial .* repeats line 1 "):
        read_trials(str(path))


def test_capsv_score_refuses_a_swapped_duplicate_trial(kaldi_dir, tmp_path):
    trials = tmp_path / "swapped.txt"
    trials.write_text("1 a.wav b.wav\n0 a.wav c.wav\n1 b.wav a.wav\n")
    out = capsv("score", "--embeddings", kaldi_dir / "emb.scp", "--test_list", trials)
    assert_one_line_error(out, f"{trials}:3", "repeats line 1")


def test_repeated_train_list_files_are_used_once_with_a_warning(tmp_path, capsys):
    from capsv.data.lists import ListError, read_train_list

    path = tmp_path / "train.txt"
    path.write_text("s1 a.wav\ns1 b.wav\ns1 ./a.wav\ns2 c.wav\ns1 x/../b.wav\ns2 c.wav\n")
    assert read_train_list(str(path)) == [("s1", "a.wav"), ("s1", "b.wav"), ("s2", "c.wav")]
    out = capsys.readouterr().out
    assert f"warning: {path}: 3 line(s) repeat a file already listed" in out
    path.write_text("s1 a.wav\ns2 b.wav\ns2 ./a.wav\n")
    with pytest.raises(ListError, match="the file ./a.wav is listed for two speakers, s1 and s2"):
        read_train_list(str(path))
