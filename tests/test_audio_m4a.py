"""AAC (.m4a) input through PyAV, and seek-based training crops from WAV/FLAC."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from capsv.audio import (AudioError, audio_info, crop_samples, load_audio, load_m4a,
                         load_random_crop, pad_each_side, write_m4a)


def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.25 * np.sin(2 * np.pi * 440.0 * t)


def test_m4a_decodes_to_int16_scale_mono(tmp_path):
    path = tmp_path / "a.m4a"
    tone = _tone(2.0)
    write_m4a(path, tone, 16000)
    audio = load_m4a(str(path))
    assert audio.dtype == np.float32
    # AAC adds at most a couple of 1024-sample frames of priming/padding.
    assert len(tone) <= len(audio) <= len(tone) + 2048
    assert 0.2 * 32768 < np.abs(audio).max() < 0.3 * 32768          # int16 scale, not [-1, 1]
    # The tone survives: strongest FFT bin at 440 Hz.
    spectrum = np.abs(np.fft.rfft(audio[4000:12000]))
    assert abs(np.argmax(spectrum) * 16000 / 8000 - 440) <= 4
    info = audio_info(str(path))
    assert info.samplerate == 16000 and abs(info.frames - len(tone)) <= 2048
    assert len(load_audio(str(path), start=100, frames=500)) == 500


def test_m4a_random_crop_and_short_file_padding(tmp_path):
    long_path, short_path = tmp_path / "long.m4a", tmp_path / "short.m4a"
    write_m4a(long_path, _tone(1.5), 16000)
    write_m4a(short_path, _tone(0.3), 16000)
    rng = np.random.default_rng(0)
    assert load_random_crop(str(long_path), 50, rng).shape == (crop_samples(50),)
    crop = load_random_crop(str(short_path), 100, rng)
    n = len(load_m4a(str(short_path)))
    pad = pad_each_side(n, crop_samples(100))
    assert crop.shape == (crop_samples(100),)
    assert not crop[:pad].any() and crop[pad:pad + n].any()


def test_m4a_at_another_rate_is_refused_under_strict_audio(tmp_path, monkeypatch):
    path = tmp_path / "cd.m4a"
    write_m4a(path, _tone(0.5, 44100), 44100)
    monkeypatch.setenv("CAPSV_STRICT_AUDIO", "1")        # --strict_audio
    with pytest.raises(AudioError, match="cd.m4a: sample rate is 44100 Hz, expected 16000 Hz"):
        load_m4a(str(path))
    with pytest.raises(AudioError, match="44100 Hz"):
        load_random_crop(str(path), 20, np.random.default_rng(0))


def test_damaged_m4a_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.m4a"
    path.write_bytes(b"\x00\x00\x00\x18ftypM4A " + b"garbage" * 50)
    with pytest.raises(AudioError, match="bad.m4a"):
        load_m4a(str(path))


@pytest.mark.parametrize("subtype, ext", [("PCM_16", "wav"), ("PCM_16", "flac")])
def test_training_crop_reads_the_right_samples(tmp_path, subtype, ext):
    """The seek-based crop equals the same slice of the whole file, for WAV and FLAC."""
    rng = np.random.default_rng(1)
    samples = rng.integers(-20000, 20000, size=40000).astype(np.int16)
    path = tmp_path / f"x.{ext}"
    sf.write(path, samples, 16000, subtype=subtype)
    frames = 100
    draw = np.random.default_rng(7)
    start = int(np.random.default_rng(7).random() * (len(samples) - crop_samples(frames)))
    crop = load_random_crop(str(path), frames, draw)
    np.testing.assert_array_equal(crop, samples[start:start + crop_samples(frames)].astype(np.float32))


def test_training_crop_of_a_short_file_follows_the_padding_rule(tmp_path):
    samples = np.arange(1, 5001, dtype=np.int16)
    path = tmp_path / "short.wav"
    sf.write(path, samples, 16000, subtype="PCM_16")
    crop = load_random_crop(str(path), 100, np.random.default_rng(0))
    pad = pad_each_side(5000, crop_samples(100))          # floor((16240 - 5000 + 1) / 2)
    assert pad == 5620
    assert crop.shape == (16240,)
    assert not crop[:pad].any()
    np.testing.assert_array_equal(crop[pad:pad + 5000], samples.astype(np.float32))


# ------------------------------------------------ seeking crops of PyAV-decoded files (issue 14)
def _speechlike(seconds: float, rate: int, noise_level: float = 0.05) -> np.ndarray:
    """A modulated tone plus noise: no two spans alike, so a misplaced crop cannot match."""
    t = np.arange(int(seconds * rate)) / rate
    noise = noise_level * np.random.default_rng(1).standard_normal(len(t))
    return np.clip(0.25 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.7 * t) + noise, -1, 1)


class _PinnedStart:
    """A generator whose one draw (the crop's start fraction) is fixed."""
    def __init__(self, fraction: float):
        self.fraction = fraction

    def random(self) -> float:
        return self.fraction


def _seek_crop_matches_whole_decode(path: str, rate: int):
    from capsv.audio import _m4a_info, decoded_frame_count, load_random_crop
    before = decoded_frame_count()
    whole = load_m4a(path)
    whole_frames = decoded_frame_count() - before
    total = int(round(_m4a_info(path, None).frames * 16000 / rate))
    crop_len = crop_samples(200)
    for fraction in (0.0, 0.0005, 0.31, 0.77, 0.9995, 1.0 - 1e-12):
        rng = _PinnedStart(fraction)               # the drawn start, pinned near each edge
        before = decoded_frame_count()
        crop = load_random_crop(path, 200, rng)
        decoded = decoded_frame_count() - before
        start = int(fraction * (total - crop_len))
        reference = whole[start:start + crop_len]
        # The container's length may count a few samples the decoder drops (Opus pre-skip):
        # a crop at the very end then ends with that many zeros.
        assert crop.shape == (crop_len,) and len(reference) >= crop_len - 512
        assert not crop[len(reference):].any()
        # Measured: identical samples (frame pts place the decode on the whole file's
        # timeline); the bound leaves room for decoder rounding only.
        assert np.abs(crop[:len(reference)] - reference).max() <= 1e-3 * np.abs(reference).max()
        assert decoded < 0.5 * whole_frames            # only the frames around the crop


def test_m4a_seek_crop_is_the_same_span_as_the_whole_decode(tmp_path):
    path = tmp_path / "long.m4a"
    write_m4a(path, _speechlike(12.0, 16000), 16000)
    _seek_crop_matches_whole_decode(str(path), 16000)


def test_m4a_seek_crop_of_a_44k_file_is_resampled_alike(tmp_path):
    # Without noise: at 44.1 kHz the AAC encoder codes noisy bands as noise substitution
    # (PNS), which the decoder fills from a generator whose state depends on where decoding
    # began, so such bands differ at random between any two decodes starting elsewhere.
    path = tmp_path / "long44.m4a"
    t = np.arange(12 * 44100) / 44100
    chirp = 0.25 * np.sin(2 * np.pi * (300 + 40 * t) * t) * np.sin(2 * np.pi * 0.7 * t)
    write_m4a(path, chirp, 44100)
    _seek_crop_matches_whole_decode(str(path), 44100)


def test_m4a_seek_crops_are_deterministic_per_seed_and_short_files_pad(tmp_path):
    from capsv.audio import random_crop
    long_path, short_path = tmp_path / "long.m4a", tmp_path / "short.m4a"
    write_m4a(long_path, _speechlike(6.0, 16000), 16000)
    write_m4a(short_path, _speechlike(0.4, 16000), 16000)
    first = load_random_crop(str(long_path), 100, np.random.default_rng(7))
    again = load_random_crop(str(long_path), 100, np.random.default_rng(7))
    np.testing.assert_array_equal(first, again)
    short = load_random_crop(str(short_path), 100, np.random.default_rng(3))
    expected = random_crop(load_m4a(str(short_path)), 100, np.random.default_rng(3))
    np.testing.assert_array_equal(short, expected)


def test_m4a_seek_crop_of_a_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "long.m4a"
    write_m4a(path, _speechlike(12.0, 16000), 16000)
    data = path.read_bytes()
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(data[:len(data) // 3])      # a download cut short: the index is lost too
    rng = _PinnedStart(0.9)
    with pytest.raises(AudioError, match="cut.m4a"):
        load_random_crop(str(cut), 100, rng)


def _encode_with_pyav(path: str, container_format: str, codec: str, rate: int) -> None:
    import av
    t = np.arange(10 * 16000) / 16000
    chirp = (0.25 * np.sin(2 * np.pi * (300 + 40 * t) * t) * np.sin(2 * np.pi * 0.7 * t))
    frame = av.AudioFrame.from_ndarray(chirp.astype(np.float32)[None, :], format="flt",
                                       layout="mono")
    frame.sample_rate = 16000
    with av.open(path, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        to_codec = av.AudioResampler(format=stream.codec_context.format.name, layout="mono",
                                     rate=rate)
        for piece in [*to_codec.resample(frame), *to_codec.resample(None)]:
            piece.pts = None
            for packet in stream.encode(piece):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.mark.parametrize("name,container_format,codec,rate", [
    ("a.mp3", "mp3", "libmp3lame", 16000),          # encoder delay: stream start_time > 0
    ("a.opus", "ogg", "libopus", 48000),            # pre-skip, 48 kHz resampled
])
def test_mp3_and_opus_seek_crops_are_the_same_span(tmp_path, name, container_format, codec, rate):
    path = str(tmp_path / name)
    try:
        _encode_with_pyav(path, container_format, codec, rate)
    except Exception as exc:                         # an FFmpeg build without the encoder
        pytest.skip(f"PyAV cannot encode {codec} here ({exc})")
    _seek_crop_matches_whole_decode(path, rate)
