"""The whole network: front end -> backbone -> pooling head."""
from __future__ import annotations

import torch
import torch.nn as nn

from .features import LogMelFrontEnd
from .pooling import POOLINGS
from .backbones import BACKBONES


class SpeakerNet(nn.Module):
    """``SpeakerNet(model="ResNetSE34L", encoder_type="CAP", nOut=512)``.

    - :meth:`frames`: waveform (B, samples), int16 scale -> frame features (B, 128, T').
    - :meth:`embed`: waveform -> embeddings (B, nOut); instance-wise poolings (TAP, SAP) only.
    - ``self.pooling``: the head; CAP's is pairwise (see :class:`capsv.models.pooling.CAP`).
    """

    def __init__(self, model: str = "ResNetSE34L", encoder_type: str = "TAP", nOut: int = 512):
        super().__init__()
        self.config = {"model": model, "encoder_type": encoder_type, "nOut": int(nOut)}
        self.frontend = LogMelFrontEnd()
        self.backbone = BACKBONES.build(model)
        self.pooling = POOLINGS.build(encoder_type, in_dim=self.backbone.out_channels, nOut=nOut)

    @property
    def pairwise(self) -> bool:
        return bool(getattr(self.pooling, "pairwise", False))

    def frames(self, wave: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.frontend(wave).unsqueeze(1))

    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        if self.pairwise:
            raise TypeError(f"{self.config['encoder_type']} is pairwise: use pooling(support, query)")
        return self.pooling(self.frames(wave))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.frames(wave)
