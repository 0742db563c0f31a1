"""Squeeze-excitation ResNet-34 backbones (spec §2).

Input: log-mel (B, 1, 64, T). Output: frame features (B, 128, T') after averaging over
frequency; T' = T/4 for the Fast ResNet-34 (``ResNetSE34L``) and T/8 for the Thin
ResNet-34 (``ResNetSE34``). Parameter names follow the reference code so its checkpoints
map one to one.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .backbones import BACKBONES


class SELayer(nn.Module):
    """Channel gating: global mean -> Linear(P, P/r) -> ReLU -> Linear(P/r, P) -> sigmoid."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class SEBasicBlock(nn.Module):
    """conv3x3 -> ReLU -> BN -> conv3x3 -> BN -> SE -> + shortcut -> ReLU (ReLU before the first BN)."""

    def __init__(self, inplanes: int, planes: int, stride=1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + shortcut)


class ResNetSE(nn.Module):
    """Stem (7x7 conv, stride (2,1)) + four SE stages + mean over frequency."""

    def __init__(self, layers: Sequence[int], channels: Sequence[int],
                 strides: Sequence, stem_pool: bool):
        super().__init__()
        self.out_channels = channels[-1]
        self.conv1 = nn.Conv2d(1, channels[0], 7, stride=(2, 1), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxPool = nn.MaxPool2d(3, stride=(2, 1), padding=1) if stem_pool else None
        inplanes = channels[0]
        for index, (blocks, planes, stride) in enumerate(zip(layers, channels, strides), start=1):
            setattr(self, f"layer{index}", self._make_layer(inplanes, planes, blocks, stride))
            inplanes = planes
        self._init_weights()

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int, stride) -> nn.Sequential:
        downsample = None
        if stride not in (1, (1, 1)) or inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        stack = [SEBasicBlock(inplanes, planes, stride, downsample)]
        stack += [SEBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stack)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 64, T) -> (B, 128, T')."""
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxPool is not None:
            x = self.maxPool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=2)


CHANNELS = (16, 32, 64, 128)
DEPTHS = (3, 4, 6, 3)


@BACKBONES.register("ResNetSE34L")
def resnet_se34l() -> ResNetSE:
    """Fast ResNet-34: no stem pooling, layer4 keeps the resolution; 4x time reduction."""
    return ResNetSE(DEPTHS, CHANNELS, (1, (2, 2), (2, 2), (1, 1)), stem_pool=False)


@BACKBONES.register("ResNetSE34")
def resnet_se34() -> ResNetSE:
    """Thin ResNet-34: stem max-pool and a strided layer4; 8x time reduction."""
    return ResNetSE(DEPTHS, CHANNELS, (1, (2, 2), (2, 2), (2, 2)), stem_pool=True)
