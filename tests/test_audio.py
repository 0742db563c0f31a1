import json
import warnings

import numpy as np
import pytest
import soundfile as sf

from capsv.audio import (AudioError, audio_info, crop_samples, eval_crops, load_audio,
                         load_random_crop, pad_each_side)


def test_crop_length_matches_spec():
    assert crop_samples(350) == 56240
    assert crop_samples(200) == 32240


def test_eval_crops_match_reference_offsets(reference_dir):
    crops = json.loads((reference_dir / "crops.json").read_text())
    for rel, info in crops["crops"].items():
        audio = load_audio(str(reference_dir / "wav" / rel))
        assert len(audio) == info["n_samples"]
        assert pad_each_side(len(audio), info["crop_len"]) == info["pad_each_side"]
        out = eval_crops(audio, crops["eval_frames"], crops["num_eval"])
        assert out.shape == (crops["num_eval"], info["crop_len"])
        padded = np.pad(audio, info["pad_each_side"])
        assert len(padded) == info["padded_len"]
        for crop, start in zip(out, info["starts"]):
            np.testing.assert_array_equal(crop, padded[start:start + info["crop_len"]])


def test_loader_returns_int16_scale(reference_dir, tmp_path):
    ints = np.array([-32768, -1, 0, 1, 32767] * 100, dtype=np.int16)
    path = tmp_path / "x.wav"
    sf.write(path, ints, 16000, subtype="PCM_16")
    audio = load_audio(str(path))
    assert audio.dtype == np.float32
    np.testing.assert_array_equal(audio, ints.astype(np.float32))


def test_seek_reads_only_the_crop(tmp_path):
    ints = (np.arange(40000) % 30000).astype(np.int16)
    path = tmp_path / "ramp.wav"
    sf.write(path, ints, 16000, subtype="PCM_16")
    part = load_audio(str(path), start=1234, frames=500)
    np.testing.assert_array_equal(part, ints[1234:1734].astype(np.float32))
    crop = load_random_crop(str(path), 100, np.random.default_rng(0))
    assert crop.shape == (crop_samples(100),)
    start = int(crop[0])
    np.testing.assert_array_equal(crop, ints[start:start + len(crop)].astype(np.float32))


def test_short_file_random_crop_is_padded(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, np.ones(1001, dtype=np.int16), 16000, subtype="PCM_16")
    crop = load_random_crop(str(path), 100, np.random.default_rng(0))
    assert crop.shape == (16240,)
    assert crop.sum() == 1001


def test_wrong_rate_names_rate_under_strict_audio(tmp_path, monkeypatch):
    path = tmp_path / "a8k.wav"
    sf.write(path, np.zeros(8000, dtype=np.int16), 8000, subtype="PCM_16")
    monkeypatch.setenv("CAPSV_STRICT_AUDIO", "1")        # --strict_audio
    with pytest.raises(AudioError, match="8000 Hz"):
        audio_info(str(path))
    with pytest.raises(AudioError, match="8000 Hz"):
        load_audio(str(path))


def test_stereo_is_downmixed_with_warning(tmp_path):
    path = tmp_path / "st.wav"
    data = np.stack([np.full(1600, 100, np.int16), np.full(1600, 300, np.int16)], axis=1)
    sf.write(path, data, 16000, subtype="PCM_16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        audio = load_audio(str(path))
    assert any("downmixed" in str(w.message) for w in caught)
    np.testing.assert_allclose(audio, 200.0)


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "bad.wav"
    path.write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(AudioError, match="bad.wav"):
        audio_info(str(path))


def test_frames_that_fit_is_the_inverse_of_crop_samples():
    from capsv.audio import crop_samples, frames_that_fit
    for frames in (1, 150, 350):
        assert frames_that_fit(crop_samples(frames)) == frames
        assert frames_that_fit(crop_samples(frames) - 1) == frames - 1
    assert frames_that_fit(100) == 0
