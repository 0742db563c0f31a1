"""Backbones by name (``--model``) and the full network :class:`SpeakerNet`."""
from __future__ import annotations

from ..registry import Registry

BACKBONES: Registry = Registry("model (--model)")

from . import resnet_se  # noqa: E402,F401  (registers the backbones)
from .speakernet import SpeakerNet  # noqa: E402

__all__ = ["BACKBONES", "SpeakerNet"]
