"""The paper's front end in plain torch: log-mel spectrogram + instance normalisation (spec §1).

Numerically equal to ``torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=512,
win_length=400, hop_length=160, f_min=0, f_max=8000, n_mels=64)`` followed by
``log(x + 1e-6)`` and ``InstanceNorm1d(64)``, without depending on torchaudio.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


from ..protocol import HOP, SAMPLE_RATE


def hz_to_mel_htk(freq: float) -> float:
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int,
                   sample_rate: int) -> torch.Tensor:
    """Triangular HTK mel filters without area normalisation, shape (n_freqs, n_mels)."""
    # torchaudio builds these in float32; do the same so the filters match bit for bit.
    bin_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    mel_edges = torch.linspace(hz_to_mel_htk(f_min), hz_to_mel_htk(f_max), n_mels + 2)
    hz_edges = 700.0 * (10.0 ** (mel_edges / 2595.0) - 1.0)
    widths = hz_edges[1:] - hz_edges[:-1]                       # (n_mels + 1,)
    offsets = hz_edges.unsqueeze(0) - bin_freqs.unsqueeze(1)    # (n_freqs, n_mels + 2)
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class LogMelFrontEnd(nn.Module):
    """Waveform (B, samples) on the int16 scale -> normalised log-mel (B, n_mels, frames).

    A crop of ``F*160 + 240`` samples gives ``F + 2`` frames. No gradient flows through it.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = 512, win_length: int = 400,
                 hop_length: int = HOP, f_min: float = 0.0, f_max: float = 8000.0,
                 n_mels: int = 64, floor: float = 1e-6, norm_eps: float = 1e-5):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.floor, self.norm_eps = floor, norm_eps
        # Buffers are not persistent: checkpoints carry only learned weights.
        self.register_buffer("window", torch.hann_window(win_length, periodic=True),
                             persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(n_fft // 2 + 1, f_min, f_max, n_mels,
                                                      sample_rate), persistent=False)

    def num_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop_length

    @torch.no_grad()
    @torch.autocast("cpu", enabled=False)
    @torch.autocast("cuda", enabled=False)
    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """``log(mel + 1e-6)`` before instance normalisation: (B, n_mels, frames).

        float32 even under --mixedprec: the log of a bf16/fp16 mel power loses the detail."""
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        spec = torch.stft(wave.float(), n_fft=self.n_fft, hop_length=self.hop_length,
                          win_length=self.win_length, window=self.window, center=True,
                          pad_mode="reflect", normalized=False, onesided=True,
                          return_complex=True)
        power = spec.abs().pow(2.0)                                  # (B, freqs, frames)
        mel = torch.matmul(power.transpose(-1, -2), self.mel_fb).transpose(-1, -2)
        return torch.log(mel + self.floor)

    @torch.no_grad()
    @torch.autocast("cpu", enabled=False)
    @torch.autocast("cuda", enabled=False)
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(self.log_mel(wave), eps=self.norm_eps)
