"""The signal and evaluation protocol: sample rate, frame hop, crop arithmetic, and the
evaluation protocol (crops per file x frames per crop) that a stored threshold belongs to.

Spec §5 (crops): a crop of ``F`` frames is ``F * HOP + WINDOW_EXTRA`` samples at 16 kHz, so
the front end (25 ms window, 10 ms hop, centred frames) gives ``F + 2`` frames.

Spec §6 (evaluation): each file gives ``num_eval`` crops of ``eval_frames`` frames, evenly
spaced; ``eval_frames`` 0 scores the whole utterance. The paper's protocol is 10 x 350.

An EER threshold is only meaningful under the protocol it was measured with, so the trainer
stores :meth:`EvalProtocol.to_meta` beside the threshold and every reader of a checkpoint
(the API, ``capsv verify``, ``capsv export``) takes it back with :func:`protocol_of`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

SAMPLE_RATE = 16000          # Hz; every file is read (and, if needed, resampled) to this
HOP = 160                    # samples between frames (10 ms)
WINDOW_EXTRA = 240           # a 400-sample window needs 240 samples beyond the last hop
INT16_SCALE = 32768.0        # waveforms are float32 on the int16 scale, like the reference

EVAL_FRAMES = 350            # the paper's crop: 3.5 s
NUM_EVAL = 10                # the paper's crops per file
META_KEY = "eval_protocol"   # checkpoint meta key, beside "threshold"

log = logging.getLogger(__name__)   # unconfigured: warnings reach stderr


def crop_samples(frames: int) -> int:
    """Samples in a crop of ``frames`` frames (350 -> 56,240)."""
    return frames * HOP + WINDOW_EXTRA


def frames_that_fit(n_samples: int) -> int:
    """The largest crop, in frames, that ``n_samples`` hold whole (the inverse of crop_samples)."""
    return max((n_samples - crop_samples(0)) // HOP, 0)


# The backbone divides time by up to 8 and the STFT's reflect padding needs n_fft/2 samples:
# a file shorter than this cannot be scored whole (eval_frames 0), only padded to a crop.
MIN_WHOLE_SAMPLES = crop_samples(8)


@dataclass(frozen=True)
class EvalProtocol:
    """How a file becomes an embedding at evaluation: ``num_eval`` crops of ``eval_frames``
    frames (0 = the whole utterance, one crop)."""
    eval_frames: int = EVAL_FRAMES
    num_eval: int = NUM_EVAL

    def to_meta(self) -> dict:
        return {"eval_frames": int(self.eval_frames), "num_eval": int(self.num_eval)}

    @classmethod
    def from_meta(cls, value) -> "EvalProtocol | None":
        """The protocol stored by :meth:`to_meta`, or None when ``value`` is not one."""
        if not isinstance(value, dict):
            return None
        frames, crops = value.get("eval_frames"), value.get("num_eval")
        if not (isinstance(frames, int) and isinstance(crops, int)) or frames < 0 or crops < 1:
            return None
        return cls(frames, crops)

    def describe(self) -> str:
        if self.eval_frames == 0:
            return "whole utterances"
        return f"{self.num_eval} crops x {self.eval_frames} frames"


PAPER = EvalProtocol()


def protocol_of(meta: dict | None, source: str = "checkpoint") -> EvalProtocol:
    """The evaluation protocol stored in a checkpoint's meta; a checkpoint written before the
    protocol was stored falls back to the paper's 10 x 350, with a logged note."""
    stored = EvalProtocol.from_meta((meta or {}).get(META_KEY))
    if stored is not None:
        return stored
    if (meta or {}).get("eer_threshold") is not None:
        log.warning("%s: no evaluation protocol stored with its threshold (written by an older "
                 "capsv); assuming the paper's %s", source, PAPER.describe())
    return PAPER


__all__ = ["SAMPLE_RATE", "HOP", "WINDOW_EXTRA", "INT16_SCALE", "EVAL_FRAMES", "NUM_EVAL",
           "META_KEY", "MIN_WHOLE_SAMPLES", "crop_samples", "frames_that_fit", "EvalProtocol", "PAPER", "protocol_of"]
