"""The network, inference-safe (imports nothing from training): front end (features) ->
backbone (resnet_se, registered by name in backbones) -> pooling head (pooling: TAP, SAP,
CAP) = :class:`SpeakerNet`; checkpoint reads and writes the model file."""
from __future__ import annotations

from . import resnet_se  # noqa: F401  (registers the backbones)
from .backbones import BACKBONES
from .speakernet import SpeakerNet

__all__ = ["BACKBONES", "SpeakerNet"]
