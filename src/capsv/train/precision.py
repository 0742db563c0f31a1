"""``--mixedprec``: autocast for the training step, with a GradScaler where fp16 needs one.

- CUDA: float16 autocast + ``torch.amp.GradScaler`` (fp16 gradients underflow without it);
  bfloat16 without a scaler if the GPU supports it and ``CAPSV_AMP_DTYPE=bfloat16`` is set.
- CPU: bfloat16 autocast (same exponent range as float32: no scaler). It is faster only on
  CPUs with bf16 instructions (AVX512-BF16/AMX); elsewhere it can be slower (see bench/).

The log-mel front end always runs in float32 (``capsv.models.features`` disables autocast), only
the backbone, pooling and loss run in reduced precision.
"""
from __future__ import annotations

import contextlib
import os

import torch


def amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        if os.environ.get("CAPSV_AMP_DTYPE") == "bfloat16" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    return torch.bfloat16


def reduced_precision_is_fast(device: torch.device) -> bool:
    """Whether ``--mixedprec`` speeds training up here: CUDA, or a CPU with bfloat16
    instructions (AVX512-BF16 / AMX, as oneDNN reports them). Elsewhere bf16 is emulated
    and slower than float32."""
    if device.type == "cuda":
        return True
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(device: torch.device, enabled: bool):
    """Context manager for the forward pass (a no-op when ``enabled`` is False)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device))


class Scaler:
    """GradScaler for CUDA float16, otherwise a pass-through with the same interface."""

    def __init__(self, device: torch.device, enabled: bool):
        self.active = enabled and device.type == "cuda" and amp_dtype(device) == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.active else None

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.active else loss).backward()

    def step(self, optimizer) -> None:
        if self.active:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.active else {}

    def load_state_dict(self, state: dict) -> None:
        if self.active and state:
            self.scaler.load_state_dict(state)


def maybe_channels_last(module: torch.nn.Module, enabled: bool) -> None:
    """``--channels_last``: keep ``module``'s 4-D weights in NHWC order, so that oneDNN runs
    its convolutions (and their gradients) channels-last: 1.24-1.29x the training steps per
    second of the Thin ResNet-34 on one AVX-512 or AVX2 core, 1.14-1.17x for the Fast one
    (bench/RESULTS.md, "channels_last"). Inputs need no change:
    a convolution with a channels-last weight computes channels-last. The parameters stay the
    same objects and keep their names, so optimisers and checkpoints are unaffected (a
    checkpoint loads into either layout); only the rounding of the sums differs."""
    if enabled:
        module.to(memory_format=torch.channels_last)


def maybe_compile(module: torch.nn.Module, enabled: bool) -> None:
    """``--compile``: torch.compile ``module`` in place (``Module.compile``: parameter names,
    hence checkpoints, stay the same). The first steps are slow while it compiles."""
    if enabled:
        module.compile()
