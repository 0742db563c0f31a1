"""m4a/AAC, MP3, Opus ... decoded with PyAV (libavcodec): file facts, whole decodes, and
training crops that seek and decode only the frames they cover."""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from ..protocol import INT16_SCALE, SAMPLE_RATE
from .core import (_RESAMPLE_MARGIN_S, AudioError, AudioInfo, _check_rate, _require_regular,
                   pad_for_crop, resample)


# ----------------------------------------------------------- m4a/AAC, MP3, Opus ... (PyAV)
# Formats decoded with PyAV (libavcodec) rather than soundfile. MP3 goes here although
# libsndfile reads it, because its libmpg123 prints 'error:' lines for ordinary files.
COMPRESSED_EXTENSIONS = (".m4a", ".aac", ".mp4", ".mp3", ".opus", ".webm", ".mka", ".wma")
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".au", ".caf", ".w64")
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + COMPRESSED_EXTENSIONS


def is_compressed(path: str) -> bool:
    """True for the formats decoded with PyAV (m4a/AAC, MP3, Opus ...), not soundfile."""
    return path.lower().endswith(COMPRESSED_EXTENSIONS)


def _open_av(path: str):
    import av  # imported lazily: only AAC input needs it

    _require_regular(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: file not found")
    try:
        container = av.open(path)
    except Exception as exc:
        raise AudioError(f"{path}: cannot open as {_format_name(path)} ({exc})") from exc
    if not container.streams.audio:
        container.close()
        raise AudioError(f"{path}: the container holds no audio stream")
    return container


def _format_name(path: str) -> str:
    return os.path.splitext(path)[1].lstrip(".").upper() or "audio"


def _m4a_info(path: str, expected_rate: int | None) -> AudioInfo:
    with _open_av(path) as container:
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        _check_rate(path, rate, expected_rate)
        if stream.duration is not None:
            frames = int(stream.duration * stream.time_base * rate)
        else:
            frames = int((container.duration or 0) * rate / 1_000_000)
        channels = int(stream.codec_context.channels)
    if frames <= 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    return AudioInfo(path, frames, rate, channels)


def _frame_to_mono(frame, path: str) -> np.ndarray:
    """One decoded PyAV frame -> mono float32 on the int16 scale."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:          # packed: (1, samples * channels), interleaved
        data = data.reshape(-1, channels).T
    if data.dtype.kind == "f":
        scale = INT16_SCALE
    elif data.dtype == np.int16:
        scale = 1.0
    elif data.dtype == np.int32:
        scale = 1.0 / 65536.0
    else:
        raise AudioError(f"{path}: unsupported decoded sample format {frame.format.name}")
    return data.astype(np.float32).mean(axis=0) * np.float32(scale)


# Frames PyAV has decoded in this process (whole files and crops): lets a test check that a
# crop decodes only part of a long file, structurally rather than by timing.
_decoded_frames = 0


def decoded_frame_count() -> int:
    """How many audio frames PyAV has decoded in this process so far."""
    return _decoded_frames


def _decode_frames(container, stream, path: str):
    """Yield the stream's decoded frames, turning decoder failures into AudioError."""
    global _decoded_frames
    try:
        for frame in container.decode(stream):
            _decoded_frames += 1
            yield frame
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: {_format_name(path)} decoding failed ({exc}); the file "
                         "is damaged, download or extract it again") from exc


def _checked_samples(audio: np.ndarray, path: str) -> np.ndarray:
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: the file decodes to NaN or infinite samples; it is damaged")
    return audio


def _crop_at(audio: np.ndarray, crop_len: int, start_fraction: float) -> np.ndarray:
    """The crop of decoded 16 kHz audio for a drawn ``start_fraction`` (the rule of
    :func:`random_crop`): short audio padded per spec §5."""
    if len(audio) <= crop_len:
        return pad_for_crop(audio, crop_len)[:crop_len]
    start = int(start_fraction * (len(audio) - crop_len))
    return audio[start:start + crop_len]


# Audio decoded before a seeking crop's first sample and thrown away: a frame decoded right
# after a seek lacks its predecessor's overlap (AAC's MDCT, MP3's bit reservoir, Opus's
# 80 ms pre-roll), so the crop starts only after the decoder has settled.
_SEEK_PREROLL_S = 0.2
# Samples a span may fall short of the container's length at the file's end (a last partial
# frame) before it counts as a truncated file.
_END_SLACK = 2048


def _seek_crop_av(path: str, crop_len: int, start_fraction: float) -> np.ndarray:
    """One training crop (crop_len,) float32 at 16 kHz of a PyAV-decoded file, decoding only
    the frames around it.

    The start is drawn against the container's length (stream duration x time_base),
    ``int(start_fraction * (length_16k - crop_len))``, as for WAV; the crop is then the same
    audio as that span of :func:`load_m4a`'s whole decode (frame pts, less the stream's
    start_time, place samples on the whole decode's timeline, priming included). Another
    rate: the span is aligned to both sampling grids, read with a margin and resampled as in
    :func:`_random_crop_resampled`. Files shorter than a crop, or without a usable duration
    or pts, are decoded whole as before.
    Bands an AAC encoder coded as noise substitution (PNS) are refilled from the decoder's
    random generator, so there the crop is other noise of the same level than the whole
    decode's; crops therefore differ from releases that decoded whole files, but stay fixed
    for a given seed, epoch and index.
    """
    with _open_av(path) as container:
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        _check_rate(path, rate, None)
        total_src = _container_samples(container, stream, rate)
        total = int(round(total_src * SAMPLE_RATE / rate)) if total_src else 0
        if total <= crop_len or rate <= 0:
            return _crop_at(load_m4a(path), crop_len, start_fraction)
        start = int(start_fraction * (total - crop_len))
        if rate == SAMPLE_RATE:
            src_start, skip, src_len = start, 0, crop_len
        else:
            grid = math.gcd(rate, SAMPLE_RATE)
            step_src, step_16k = rate // grid, SAMPLE_RATE // grid
            margin = int(math.ceil(_RESAMPLE_MARGIN_S * SAMPLE_RATE))
            block = max(start - margin, 0) // step_16k
            src_start, skip = block * step_src, start - block * step_16k
            src_len = int(math.ceil((skip + crop_len + margin) * rate / SAMPLE_RATE))
        span = _decode_span(container, stream, path, src_start, src_len, total_src)
    if span is None:                            # no pts to place frames: decode it all
        return _crop_at(load_m4a(path), crop_len, start_fraction)
    crop = resample(_checked_samples(span, path), rate)[skip:skip + crop_len]
    if len(crop) < crop_len:                    # the file's last samples: pad the few missing
        crop = np.pad(crop, (0, crop_len - len(crop)))
    return crop


def _container_samples(container, stream, rate: int) -> int:
    """The stream's length in samples at its own rate from the container, 0 if unknown."""
    if stream.duration and stream.time_base:
        return int(stream.duration * stream.time_base * rate)
    if container.duration:
        return int(container.duration * rate / 1_000_000)
    return 0


def _decode_span(container, stream, path: str, src_start: int, src_len: int,
                 total_src: int) -> np.ndarray | None:
    """Samples [src_start, src_start + src_len) of the whole decode's timeline (source rate,
    mono), seeking to a little before them; None when frames carry no pts."""
    origin = stream.start_time or 0                    # pts of the whole decode's first sample
    tb = stream.time_base
    rate = int(stream.codec_context.sample_rate)
    first = src_start - int(_SEEK_PREROLL_S * rate)
    if first > 0:
        try:
            container.seek(origin + int(first / rate / tb), stream=stream, backward=True)
        except Exception as exc:
            raise AudioError(f"{path}: cannot seek in the {_format_name(path)} file ({exc}); "
                             "it is damaged, download or extract it again") from exc
    chunks, span_pos = [], None
    end = src_start + src_len
    for frame in _decode_frames(container, stream, path):
        if frame.pts is None:
            return None
        pos = int(round((frame.pts - origin) * tb * rate))
        if span_pos is None:
            if pos > src_start:                 # the seek overshot: decode from the start
                return _whole_span(path, src_start, src_len)
            span_pos = pos
        chunks.append(_frame_to_mono(frame, path))
        if pos + frame.samples >= end:
            break
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    span = audio[src_start - (span_pos or 0):][:src_len] if span_pos is not None else audio
    if (span_pos or 0) + len(audio) < min(end, total_src) - _END_SLACK:
        raise AudioError(f"{path}: the container promises {total_src} samples but decoding "
                         f"stopped at {(span_pos or 0) + len(audio)}; the file is truncated, "
                         "download or extract it again")
    return span


def _whole_span(path: str, src_start: int, src_len: int) -> np.ndarray:
    """The span cut from a whole decode at the source rate (fallback of :func:`_decode_span`)."""
    with _open_av(path) as container:
        stream = container.streams.audio[0]
        audio = np.concatenate([_frame_to_mono(f, path)
                                for f in _decode_frames(container, stream, path)] or
                               [np.zeros(0, np.float32)])
    return audio[src_start:src_start + src_len]


def load_m4a(path: str, expected_rate: int | None = None) -> np.ndarray:
    """Decode a whole file with PyAV (m4a/AAC, MP3, Opus ...) -> mono float32 at 16 kHz on
    the int16 scale.

    Channels are averaged, then audio at another rate is resampled by :func:`resample`
    (refused when ``expected_rate`` is given or --strict_audio is on). VoxCeleb2's 16 kHz
    AAC is never resampled. Priming samples are handled as ffmpeg does (the container's
    edit list).
    """
    with _open_av(path) as container:
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        _check_rate(path, rate, expected_rate)
        chunks = [_frame_to_mono(frame, path) for frame in _decode_frames(container, stream, path)]
        if stream.codec_context.channels > 1:
            warnings.warn(f"{path}: {stream.codec_context.channels} channels, downmixed to "
                          "mono by averaging", stacklevel=2)
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    audio = np.concatenate(chunks)
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: the file decodes to NaN or infinite samples; it is damaged")
    return resample(audio, rate)


def write_m4a(path: str, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Encode mono samples as AAC in an MP4 (.m4a) container with PyAV (VoxCeleb2's format).

    ``samples``: int16 values, or floats in [-1, 1]. Used to build m4a test and benchmark data.
    """
    import av

    if samples.dtype == np.int16:
        data, fmt = samples[None, :], "s16"
    else:
        data, fmt = samples[None, :].astype(np.float32), "flt"
    with av.open(str(path), "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
