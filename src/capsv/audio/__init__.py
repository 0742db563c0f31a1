"""Audio I/O and the paper's crop rules.

Every waveform that leaves this module is float32 **on the int16 scale**
(-32768..32767), because the front end's ``+1e-6`` floor assumes it (spec §1).

Crop rules (spec §5): a crop of ``F`` frames is ``F*160 + 240`` samples; a file
no longer than that is zero-padded by ``floor((crop - n + 1) / 2)`` on *both*
sides; evaluation takes ``num_eval`` crops whose starts are
``linspace(0, padded - crop, num_eval)`` truncated to integers.

Any sample rate, channel count and common format is accepted: audio is decoded (soundfile for
WAV/FLAC/OGG, PyAV for m4a/AAC, MP3, Opus and the like), downmixed to mono and resampled to
16 kHz by :func:`resample` (libswresample through PyAV), the one resampler of the package.
``audio_info`` warns once per file that is not 16 kHz; ``--strict_audio``
(:func:`set_strict_rate`) refuses such files instead. 16 kHz WAV/FLAC never meet the
resampler.
"""
from __future__ import annotations

import math
import os
import struct
import warnings
from contextlib import contextmanager

import numpy as np
import soundfile as sf

from ..protocol import HOP, INT16_SCALE, SAMPLE_RATE, crop_samples, frames_that_fit  # noqa: F401
from .compressed import (AUDIO_EXTENSIONS, COMPRESSED_EXTENSIONS, SOUNDFILE_EXTENSIONS,  # noqa: F401
                         _m4a_info, _seek_crop_av, decoded_frame_count, is_compressed, load_m4a,
                         write_m4a)
from .core import (_RESAMPLE_MARGIN_S, STRICT_RATE_ENV, AudioError, AudioInfo,  # noqa: F401
                   ResampledAudioWarning, _check_rate, _require_regular, _to_mono, _truncated,
                   eval_crop_starts, eval_crops, note_resampled, pad_each_side, pad_for_crop,
                   random_crop, resample, reset_rate_warnings, set_strict_rate, strict_audio,
                   strict_rate)
from .pcm16 import _open_pcm16  # noqa: F401


def audio_info(path: str, expected_rate: int | None = None, warn: bool = True) -> AudioInfo:
    """Read only the header; raise :class:`AudioError` for missing or corrupt files.

    ``expected_rate``: refuse files of another rate; None (default) accepts any rate, unless
    ``--strict_audio`` is on, and warns once per file that will be resampled. For files
    decoded by PyAV (m4a, MP3, Opus ...) the sample count comes from the container's duration
    and may differ from the decoded length by a frame of priming samples. ``warn=False``:
    no resampling warning (a check before the step that warns).
    """
    info = _read_info(path, expected_rate)
    if warn and info.samplerate != SAMPLE_RATE:
        note_resampled(path, info.samplerate)
    return info


def _read_info(path: str, expected_rate: int | None) -> AudioInfo:
    """:func:`audio_info` without the warning."""
    _require_regular(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: file not found")
    if is_compressed(path):
        info = _m4a_info(path, expected_rate)
    else:
        try:
            header = sf.info(path)
        except Exception as exc:  # soundfile raises several types for bad headers
            raise AudioError(f"{path}: cannot read audio ({exc}); is it a valid audio file?") from exc
        _check_rate(path, header.samplerate, expected_rate)
        if header.frames <= 0:
            raise AudioError(f"{path}: the file holds no audio samples")
        check_wav_complete(path)
        info = AudioInfo(path, int(header.frames), int(header.samplerate), int(header.channels))
    return info


def check_wav_complete(path: str) -> None:
    """Raise :class:`AudioError` if a RIFF/WAVE file's ``data`` chunk is cut short.

    libsndfile silently reads what is there, so a truncated download would pass as a
    shorter, valid file. Streamed WAVs (size 0 or 0xFFFFFFFF) and non-WAV files are skipped.
    """
    _require_regular(path)            # every soundfile open comes through here first
    if not path.lower().endswith(".wav"):
        return
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            found = _find_data_chunk(f, size)
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc})") from None
    if found is None:
        return
    offset, length = found
    available = size - (offset + 8)
    if length not in (0, 0xFFFFFFFF) and available < length:
        raise AudioError(f"{path}: truncated WAV: the header declares {length} bytes of "
                         f"audio but the file holds {available}; re-download or "
                         "re-extract it")


def _find_data_chunk(f, size: int) -> tuple[int, int] | None:
    """(offset, declared length) of a RIFF/WAVE file's ``data`` chunk, wherever it is (a
    big LIST or JUNK chunk may push it far in); None for other files. One 8-byte read per
    chunk header, seeking over the bodies."""
    f.seek(0)
    head = f.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset = 12
    while offset + 8 <= size:
        f.seek(offset)
        header = f.read(8)
        if len(header) < 8:
            return None
        chunk, length = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk == b"data":
            return offset, length
        offset += 8 + length + (length & 1)
    return None


@contextmanager
def _open_soundfile(path: str, expected_rate: int | None):
    """``sf.SoundFile`` with the rate checked and every failure turned into :class:`AudioError`."""
    check_wav_complete(path)
    try:
        with sf.SoundFile(path) as f:
            _check_rate(path, f.samplerate, expected_rate)
            yield f
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: cannot read audio ({exc})") from exc


def _read_int16_scale(f: sf.SoundFile, path: str, frames: int) -> np.ndarray:
    # soundfile scales integer PCM (16/24/32-bit) and float WAVs to [-1, 1), so x32768 gives
    # the int16 scale; for int16 files it restores the original integers exactly.
    data = f.read(frames, dtype="float32", always_2d=True)
    if f.subtype in ("FLOAT", "DOUBLE") and not np.isfinite(data).all():
        raise AudioError(f"{path}: the file holds NaN or infinite samples; it is damaged")
    return _to_mono(data, path) * np.float32(INT16_SCALE)


def load_audio(path: str, start: int = 0, frames: int = -1,
               expected_rate: int | None = None) -> np.ndarray:
    """Read ``frames`` samples from ``start`` (seeking, not reading the whole file).

    Returns a mono float32 array at 16 kHz on the int16 scale. Multi-channel audio is
    averaged (with a warning); audio at another rate is decoded whole and resampled (then
    ``start`` and ``frames`` count 16 kHz samples), or refused when ``expected_rate`` is given
    or --strict_audio is on. Files decoded by PyAV (m4a, MP3, Opus ...) are decoded whole
    and then sliced.
    """
    if is_compressed(path):
        audio = load_m4a(path, expected_rate)
        return audio[start:] if frames < 0 else audio[start:start + frames]
    with _open_soundfile(path, expected_rate) as f:
        if f.samplerate != SAMPLE_RATE:
            audio = resample(_read_int16_scale(f, path, -1), f.samplerate)
            audio = audio[start:] if frames < 0 else audio[start:start + frames]
        else:
            if start:
                f.seek(start)
            audio = _read_int16_scale(f, path, frames)
    if len(audio) == 0 and frames != 0:
        raise AudioError(f"{path}: the file holds no audio samples"
                         + (f" from sample {start}" if start else ""))
    return audio


def load_eval_crops(path: str, eval_frames: int, num_eval: int) -> np.ndarray:
    """``eval_crops(load_audio(path), ...)``, but a 16 kHz WAV/FLAC longer than one crop is
    read crop by crop (seek + read), so a 10-minute file costs ``num_eval`` crops of memory.
    Audio at another rate is decoded whole and resampled first."""
    if eval_frames <= 0 or is_compressed(path):
        return eval_crops(load_audio(path), eval_frames, num_eval)
    crop_len = crop_samples(eval_frames)
    with _open_pcm16(path) as wav:
        if wav is not None:
            if wav.frames <= crop_len:
                return eval_crops(wav.read(0, wav.frames), eval_frames, num_eval)
            crops = np.empty((num_eval, crop_len), dtype=np.float32)
            for i, start in enumerate(eval_crop_starts(wav.frames, crop_len, num_eval)):
                crop = wav.read(int(start), crop_len)
                if len(crop) < crop_len:
                    raise _truncated(path, wav.frames)
                crops[i] = crop
            return crops
    with _open_soundfile(path, None) as f:
        if f.samplerate != SAMPLE_RATE:
            return eval_crops(resample(_read_int16_scale(f, path, -1), f.samplerate),
                              eval_frames, num_eval)
        total = f.frames
        if total <= crop_len:                  # short: padded, as eval_crops does
            audio = _read_int16_scale(f, path, -1)
            if len(audio) == 0:
                raise AudioError(f"{path}: the file holds no audio samples")
            return eval_crops(audio, eval_frames, num_eval)
        crops = np.empty((num_eval, crop_len), dtype=np.float32)
        for i, start in enumerate(eval_crop_starts(total, crop_len, num_eval)):
            f.seek(int(start))
            crop = _read_int16_scale(f, path, crop_len)
            if len(crop) < crop_len:
                raise AudioError(f"{path}: the header promises {total} samples but reading "
                                 "stopped early; the file is truncated, re-extract it")
            crops[i] = crop
    return crops


def load_random_crop(path: str, max_frames: int, rng: np.random.Generator,
                     n_samples: int | None = None) -> np.ndarray:
    """One training crop with a random start, reading only the samples it needs.

    16 kHz WAV/FLAC: one open, the header gives the length, then seek + read of ``crop_len``
    samples. Another rate: the crop's span at the source rate (plus a filter margin) is read
    and resampled. m4a, MP3, Opus ...: the container's length gives the start, then a seek to
    just before it and a decode of only the frames the crop covers (:func:`_seek_crop_av`).
    ``n_samples`` overrides the header's length (rarely useful; not for PyAV files).
    """
    if is_compressed(path):
        return _seek_crop_av(path, crop_samples(max_frames), rng.random())
    crop_len = crop_samples(max_frames)
    start_fraction = rng.random()
    with _open_pcm16(path) as wav:
        if wav is not None:
            total = wav.frames if n_samples is None else n_samples
            if total <= crop_len:
                return pad_for_crop(wav.read(0, total), crop_len)[:crop_len]
            crop = wav.read(int(start_fraction * (total - crop_len)), crop_len)
            if len(crop) < crop_len:
                raise _truncated(path, total)
            return crop
    with _open_soundfile(path, None) as f:
        if f.samplerate != SAMPLE_RATE:
            return _random_crop_resampled(f, path, crop_len, start_fraction)
        total = f.frames if n_samples is None else n_samples
        if total <= 0:
            raise AudioError(f"{path}: the file holds no audio samples")
        if total <= crop_len:
            return pad_for_crop(_read_int16_scale(f, path, -1), crop_len)[:crop_len]
        f.seek(int(start_fraction * (total - crop_len)))
        crop = _read_int16_scale(f, path, crop_len)
    if len(crop) < crop_len:
        raise _truncated(path, total)
    return crop


def _random_crop_resampled(f: sf.SoundFile, path: str, crop_len: int,
                           start_fraction: float) -> np.ndarray:
    """A training crop of a file at another rate: the crop's span at the source rate, with a
    small margin each side, read and resampled; the same start rule as 16 kHz files."""
    rate = f.samplerate
    total = int(round(f.frames * SAMPLE_RATE / rate))            # length at 16 kHz
    if f.frames <= 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    if total <= crop_len:
        audio = resample(_read_int16_scale(f, path, -1), rate)
        return pad_for_crop(audio, crop_len)[:crop_len]
    start = int(start_fraction * (total - crop_len))
    # Start the span on a sample where both sampling grids meet (every rate/gcd source
    # samples), so the crop equals the same crop of the whole file resampled.
    grid = math.gcd(rate, SAMPLE_RATE)
    step_src, step_16k = rate // grid, SAMPLE_RATE // grid
    margin = int(math.ceil(_RESAMPLE_MARGIN_S * SAMPLE_RATE))
    block = max(start - margin, 0) // step_16k
    f.seek(block * step_src)
    skip = start - block * step_16k
    span = _read_int16_scale(f, path, int(math.ceil((skip + crop_len + margin) * rate / SAMPLE_RATE)))
    crop = resample(span, rate)[skip:skip + crop_len]
    if len(crop) < crop_len:                    # the file's last samples: pad the few missing
        crop = np.pad(crop, (0, crop_len - len(crop)))
    return crop


def training_decode_note(paths: list[str], max_frames: int, sample: int = 64) -> str | None:
    """A note for the training log when training files need decoding or resampling on the
    fly (another rate than 16 kHz, or m4a/MP3/Opus ...), with the measured cost per crop.

    Looks at the headers of up to ``sample`` files spread over the list (not all: a
    million headers take minutes); None when all of them are 16 kHz WAV/FLAC, or under
    --strict_audio (where such files are refused on reading)."""
    if strict_rate() or not paths:
        return None
    chosen = paths[::max(1, len(paths) // sample)][:sample]
    slow, plain, rates = [], [], set()
    for path in chosen:
        try:
            rate = _read_info(path, None).samplerate
        except AudioError:
            continue                   # a bad file is reported when it is read
        if rate != SAMPLE_RATE or is_compressed(path):
            slow.append(path)
            rates.add(rate)
        else:
            plain.append(path)
    if not slow:
        return None
    cost = _crop_read_ms(slow[0], max_frames)
    versus = f", against {_crop_read_ms(plain[0], max_frames):.2f} ms for a 16 kHz WAV" if plain else ""
    kinds = ", ".join(f"{r} Hz" for r in sorted(rates))
    return (f"{len(slow)} of {len(chosen)} sampled training files are not 16 kHz WAV/FLAC "
            f"({kinds}; e.g. {slow[0]}): each crop is decoded and resampled to 16 kHz on the "
            f"fly, {cost:.1f} ms per crop measured here{versus}. Converting them once to 16 kHz "
            "WAV is faster (m4a: capsv prepare --convert; others: e.g. "
            "`sox in.flac -r 16000 out.wav`).")


def _crop_read_ms(path: str, max_frames: int, repeats: int = 3) -> float:
    """Median wall time of reading one random training crop of ``path``, in ms."""
    import time

    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(repeats):
            began = time.perf_counter()
            try:
                load_random_crop(path, max_frames, np.random.default_rng(seed))
            except AudioError:
                return float("nan")
            times.append(time.perf_counter() - began)
    return 1000 * sorted(times)[len(times) // 2]
