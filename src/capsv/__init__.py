"""capsv: speaker verification with Cross Attentive Pooling (Kye, Kwon, Chung; SLT 2021)."""
__version__ = "0.1.0"
