"""Backbones by name (``--model``); each backbone module registers itself here."""
from __future__ import annotations

from ..registry import Registry

BACKBONES: Registry = Registry("model (--model)")
