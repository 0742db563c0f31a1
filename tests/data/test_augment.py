"""Augmentation: MUSAN/RIR preparation over real HTTP, the online Augmenter, speed perturbation."""
from __future__ import annotations

import io
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import soundfile as sf

from capsv.cli import main
from capsv.data.augment import Augmenter, AugmentError, convolve_rir
from capsv.data.speed import add_speed_speakers, speaker_speed, speed_input_length, speed_perturb
from prep_helpers import FileServer, md5, tone

RATE = 16000


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def noise(seconds: float, seed: int, level: float = 2000) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0, level, int(seconds * RATE))).astype(np.int16)


MUSAN = {  # path inside musan.tar.gz -> seconds
    "musan/noise/free-sound/noise-free-sound-0000.wav": 7.0,
    "musan/speech/librivox/speech-librivox-0000.wav": 11.0,
    "musan/speech/librivox/speech-librivox-0001.wav": 3.0,
    "musan/music/fma/music-fma-0000.wav": 5.0,
}


def musan_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for i, (name, seconds) in enumerate({**MUSAN, "musan/README": 0}.items()):
            data = wav_bytes(noise(seconds, i)) if seconds else b"MUSAN corpus"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def rir_zip() -> bytes:
    buffer = io.BytesIO()
    decay = np.exp(-np.arange(2000) / 300.0)
    with zipfile.ZipFile(buffer, "w") as zf:
        for room in (1, 2):
            rir = (np.random.default_rng(room).normal(0, 1, 2000) * decay * 10000).astype(np.int16)
            zf.writestr(f"RIRS_NOISES/simulated_rirs/smallroom/Room00{room}/Room00{room}-00001.wav",
                        wav_bytes(rir))
        zf.writestr("RIRS_NOISES/README", b"RIRs")
    return buffer.getvalue()


def test_prepare_augment_downloads_extracts_and_cuts(tmp_path, capfd):
    files = {"musan.tar.gz": musan_tar(), "rirs_noises.zip": rir_zip()}
    table = tmp_path / "aug.txt"
    table.write_text("".join(f"{n} {md5(d)}\n" for n, d in files.items()))
    save = tmp_path / "data"
    with FileServer(files) as server:
        argv = ["prepare", "--save_path", str(save), "--augment", "--aug_base_url", server.url + "/open",
                "--aug_parts_list", str(table), "--workers", "2", "--no_progress"]
        assert main(argv) == 0
        seen = len(server.requests)
        assert main(argv) == 0 and len(server.requests) == seen  # the re-run does nothing
    out = capfd.readouterr().out
    split, rirs = save / "musan_split", save / "RIRS_NOISES" / "simulated_rirs"
    assert f"--musan_path {split} --rir_path {rirs}" in out
    pieces = {str(p.relative_to(split)): sf.info(str(p)).frames for p in split.rglob("*.wav")}
    assert pieces == {
        "noise/free-sound/noise-free-sound-0000/00000.wav": 80000,    # 7 s: one 5 s piece
        "speech/librivox/speech-librivox-0000/00000.wav": 80000,      # 11 s: two pieces
        "speech/librivox/speech-librivox-0000/00001.wav": 80000,
        "speech/librivox/speech-librivox-0001/00000.wav": 48000,      # 3 s: kept whole
        "music/fma/music-fma-0000/00000.wav": 80000,                  # exactly 5 s
    }
    original = sf.read(str(save / "musan/speech/librivox/speech-librivox-0000.wav"), dtype="int16")[0]
    piece = sf.read(str(split / "speech/librivox/speech-librivox-0000/00001.wav"), dtype="int16")[0]
    assert np.array_equal(piece, original[80000:160000])
    assert len(list(rirs.rglob("*.wav"))) == 2


def test_tar_entry_outside_the_target_is_refused(tmp_path, capfd):
    save = tmp_path / "data"
    save.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name in ("musan/noise/a.wav", "../evil.txt"):
            info = tarfile.TarInfo(name)
            info.size = 6
            tf.addfile(info, io.BytesIO(b"gotcha"))
    (save / "musan.tar.gz").write_bytes(buffer.getvalue())
    table = tmp_path / "aug.txt"
    table.write_text(f"musan.tar.gz {md5(buffer.getvalue())}\n")
    rc = main(["prepare", "--save_path", str(save), "--augment", "--aug_parts_list", str(table),
               "--no_progress"])
    err = capfd.readouterr().err
    assert rc == 2 and "refused entry '../evil.txt'" in err
    assert not (tmp_path / "evil.txt").exists()


@pytest.fixture
def aug_dirs(tmp_path):
    musan, rirs = tmp_path / "musan_split", tmp_path / "rirs"
    specs = {"noise/a/n0/00000.wav": 1.0, "speech/b/s0/00000.wav": 5.0, "speech/b/s1/00000.wav": 2.0,
             "speech/b/s2/00000.wav": 5.0, "music/c/m0/00000.wav": 5.0}
    for i, (rel, seconds) in enumerate(specs.items()):
        (musan / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(musan / rel), noise(seconds, 10 + i), RATE, subtype="PCM_16")
    (rirs / "room").mkdir(parents=True)
    rir = np.zeros(800, np.int16)
    rir[[0, 200, 799]] = [20000, -8000, 3000]
    sf.write(str(rirs / "room" / "r1.wav"), rir, RATE, subtype="PCM_16")
    return str(musan), str(rirs), rir.astype(np.float64)


def snr_db(clean: np.ndarray, added: np.ndarray) -> float:
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2))


def test_augmenter_output_contract_and_kinds(aug_dirs):
    aug = Augmenter(aug_dirs[0], aug_dirs[1])
    audio = tone(2.0, 300).astype(np.float32)
    rng = np.random.default_rng(0)
    outputs = [aug(audio, rng) for _ in range(12)]
    for out in outputs:
        assert out.dtype == np.float32 and out.shape == audio.shape and np.isfinite(out).all()
        assert not np.array_equal(out, audio)
    # each call draws one kind from the caller's generator, then applies it
    kinds = set()
    for seed in range(16):
        rng = np.random.default_rng(seed)
        kind = Augmenter.KINDS[int(rng.integers(len(Augmenter.KINDS)))]
        kinds.add(kind)
        assert np.array_equal(aug(audio, np.random.default_rng(seed)), aug.apply(kind, audio, rng))
    assert kinds == set(Augmenter.KINDS)


@pytest.mark.parametrize("kind, count, low, high", [("noise", (1, 1), 0, 15), ("speech", (3, 7), 13, 20),
                                                     ("music", (1, 1), 5, 15)])
def test_noise_levels_follow_the_recipe(aug_dirs, kind, count, low, high):
    aug = Augmenter(aug_dirs[0], aug_dirs[1])
    audio = tone(3.0, 250).astype(np.float32)     # longer than the 1 s and 2 s noise files: wraps
    rng = np.random.default_rng(3)
    counts = set()
    for _ in range(10):
        added = aug.noises(kind, audio, rng)
        counts.add(len(added))
        for a in added:
            assert a.shape == audio.shape
            assert low - 0.01 <= snr_db(audio, a) <= high + 0.01
    assert min(counts) >= count[0] and max(counts) <= count[1]
    out = aug.apply(kind, audio, np.random.default_rng(4))
    expected = audio + sum(aug.noises(kind, audio, np.random.default_rng(4)))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-3)


def test_reverb_is_convolution_with_the_unit_energy_rir(aug_dirs):
    aug = Augmenter(aug_dirs[0], aug_dirs[1])
    audio = tone(0.5, 440).astype(np.float32)
    rir = aug_dirs[2] / np.sqrt(np.sum(aug_dirs[2] ** 2))
    expected = np.convolve(audio.astype(np.float64), rir)[:len(audio)]
    np.testing.assert_allclose(aug.reverberate(audio, np.random.default_rng(0)), expected, atol=0.05)
    impulse = np.zeros(10)
    impulse[0] = 5.0
    np.testing.assert_allclose(convolve_rir(audio, impulse), audio, atol=1e-3)


def test_augmenter_pickles_small_and_replays_identically(aug_dirs):
    aug = Augmenter(aug_dirs[0], aug_dirs[1])
    blob = pickle.dumps(aug)
    assert len(blob) < 4000                          # file lists only, no audio
    copy = pickle.loads(blob)
    audio = tone(1.0, 300).astype(np.float32)
    for seed in range(6):
        assert np.array_equal(aug(audio, np.random.default_rng(seed)),
                              copy(audio, np.random.default_rng(seed)))


def test_augmenter_needs_prepared_folders(tmp_path, aug_dirs):
    with pytest.raises(AugmentError, match="capsv prepare --augment"):
        Augmenter(str(tmp_path / "nowhere"), aug_dirs[1])
    with pytest.raises(AugmentError, match="rir_path"):
        Augmenter(aug_dirs[0], str(tmp_path / "nowhere"))


@pytest.mark.parametrize("speed", [0.9, 1.1])
def test_speed_perturb_scales_time_and_pitch(speed):
    t = np.arange(RATE) / RATE
    audio = (np.sin(2 * np.pi * 440 * t) * 10000).astype(np.float32)
    out = speed_perturb(audio, speed)
    assert out.dtype == np.float32 and len(out) == int((RATE - 1) / speed) + 1
    m = np.arange(len(out))
    expected = np.sin(2 * np.pi * 440 * speed * m / RATE) * 10000
    interior = slice(32, len(out) - 32)              # the edges see the zero padding
    assert np.max(np.abs(out[interior] - expected[interior])) < 30   # < 0.3 % of full scale
    # a crop of L samples can always be made from speed_input_length(L) input samples
    for length in (100, 32240, 56240):
        n_in = speed_input_length(length, speed)
        assert len(speed_perturb(np.zeros(n_in, np.float32), speed)) >= length


def test_speed_perturb_removes_content_above_the_new_nyquist():
    t = np.arange(RATE) / RATE
    audio = (np.sin(2 * np.pi * 7600 * t) * 10000).astype(np.float32)   # 7.6 kHz * 1.1 > 8 kHz
    out = speed_perturb(audio, 1.1)
    assert np.sqrt(np.mean(out[100:-100] ** 2)) < 0.1 * np.sqrt(np.mean(audio ** 2))


def test_speed_speakers_are_new_labels():
    items = [("id1", "id1/a/1.wav"), ("id2", "id2/b/1.wav")]
    out = add_speed_speakers(items)
    assert out == items + [("id1_sp0.9", "id1/a/1.wav"), ("id2_sp0.9", "id2/b/1.wav"),
                           ("id1_sp1.1", "id1/a/1.wav"), ("id2_sp1.1", "id2/b/1.wav")]
    assert [speaker_speed(s) for s, _ in out] == [1.0, 1.0, 0.9, 0.9, 1.1, 1.1]
    with pytest.raises(ValueError):
        add_speed_speakers(items, (1.0,))
