"""capsv: speaker verification with Cross Attentive Pooling (Kye, Kwon, Chung; SLT 2021).

``from capsv import SpeakerVerifier`` gives the Python API (:mod:`capsv.api`); it is imported
on first use so that ``import capsv`` stays light.
"""
__version__ = "0.1.0"

__all__ = ["SpeakerVerifier", "Verification", "__version__"]


def __getattr__(name: str):
    if name in ("SpeakerVerifier", "Verification"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'capsv' has no attribute {name!r}")
