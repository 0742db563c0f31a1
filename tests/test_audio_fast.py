"""The cached-header PCM16 crop reader (audio._open_pcm16) against soundfile's reading."""
import os
import struct
import warnings

import numpy as np
import pytest
import soundfile as sf

from capsv import audio
from capsv.audio import AudioError, crop_samples, load_eval_crops, load_random_crop

SR = 16000


def _slow_random_crop(path, frames, seed):
    """The same crop rule on soundfile's whole-file read."""
    return audio.random_crop(audio.load_audio(path), frames, np.random.default_rng(seed))


def _write(path, data, **kw):
    sf.write(str(path), data, SR, **kw)
    return str(path)


@pytest.fixture
def ints():
    return (np.random.default_rng(0).standard_normal(SR * 3) * 3000).astype(np.int16)


@pytest.mark.parametrize("layout", ["mono", "stereo", "wavex", "short"])
def test_fast_crops_equal_soundfile_crops(tmp_path, ints, layout):
    data = {"mono": ints, "stereo": np.stack([ints, ints[::-1]], axis=1),
            "wavex": ints, "short": ints[:5001]}[layout]
    kw = {"format": "WAVEX"} if layout == "wavex" else {}
    path = _write(tmp_path / f"{layout}.wav", data, subtype="PCM_16", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with audio._open_pcm16(path) as wav:
            assert wav is not None and wav.frames == len(data)       # the fast path is taken
        for seed in range(5):
            np.testing.assert_array_equal(load_random_crop(path, 100, np.random.default_rng(seed)),
                                          _slow_random_crop(path, 100, seed))
        np.testing.assert_array_equal(load_eval_crops(path, 100, 4),
                                      audio.eval_crops(audio.load_audio(path), 100, 4))


def test_chunks_before_data_and_odd_chunk_padding(tmp_path, ints):
    """A LIST chunk of odd length (padded to even) between fmt and data."""
    plain = _write(tmp_path / "plain.wav", ints, subtype="PCM_16")
    raw = open(plain, "rb").read()
    data_at = raw.index(b"data")
    extra = b"LIST" + struct.pack("<I", 5) + b"abcde" + b"\0"
    body = raw[12:data_at] + extra + raw[data_at:]
    path = tmp_path / "list.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)
    with audio._open_pcm16(str(path)) as wav:
        assert wav is not None
    np.testing.assert_array_equal(load_random_crop(str(path), 100, np.random.default_rng(1)),
                                  _slow_random_crop(str(path), 100, 1))


@pytest.mark.parametrize("subtype", ["PCM_24", "FLOAT", "PCM_U8"])
def test_other_formats_fall_back_to_soundfile(tmp_path, ints, subtype):
    path = _write(tmp_path / f"{subtype}.wav", ints.astype(np.float32) / 32768, subtype=subtype)
    with audio._open_pcm16(path) as wav:
        assert wav is None
    np.testing.assert_array_equal(load_random_crop(path, 100, np.random.default_rng(2)),
                                  _slow_random_crop(path, 100, 2))


def test_rewritten_file_is_parsed_again(tmp_path, ints):
    path = _write(tmp_path / "a.wav", ints, subtype="PCM_16")
    load_random_crop(path, 100, np.random.default_rng(0))
    _write(tmp_path / "a.wav", np.stack([ints[:SR], ints[:SR]], axis=1), subtype="PCM_16")
    os.utime(path, ns=(1, 1))              # a different mtime even on coarse clocks
    with audio._open_pcm16(path) as wav:
        assert wav.frames == SR and wav.layout.channels == 2


def test_bad_files_keep_their_errors(tmp_path, ints, monkeypatch):
    rate = tmp_path / "r8k.wav"
    sf.write(str(rate), ints, 8000, subtype="PCM_16")
    monkeypatch.setenv("CAPSV_STRICT_AUDIO", "1")        # --strict_audio
    with pytest.raises(AudioError, match="8000 Hz"):
        load_random_crop(str(rate), 100, np.random.default_rng(0))
    monkeypatch.delenv("CAPSV_STRICT_AUDIO")
    full = open(_write(tmp_path / "full.wav", ints, subtype="PCM_16"), "rb").read()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full[:44 + 1000])
    for read in (lambda p: load_random_crop(p, 100, np.random.default_rng(0)),
                 lambda p: load_eval_crops(p, 100, 3)):
        with pytest.raises(AudioError, match="truncated WAV"):
            read(str(cut))


def test_short_read_is_an_error_not_a_short_crop(tmp_path, ints):
    """A length claim beyond the data (a stale or overridden count) fails loudly."""
    path = _write(tmp_path / "b.wav", ints, subtype="PCM_16")
    with pytest.raises(AudioError, match="truncated"):
        load_random_crop(path, 100, np.random.default_rng(0), n_samples=len(ints) + 10 * SR)
