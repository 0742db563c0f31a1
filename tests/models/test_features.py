import numpy as np
import torch

from capsv.models.features import LogMelFrontEnd, mel_filterbank


def _reference_state(reference_dir):
    return torch.load(reference_dir / "ResNetSE34L_TAP.model", weights_only=True)


def test_filterbank_and_window_equal_torchaudio_buffers(reference_dir):
    state = _reference_state(reference_dir)
    fb = mel_filterbank(257, 0.0, 8000.0, 64, 16000)
    torch.testing.assert_close(fb, state["__S__.torchfb.mel_scale.fb"], rtol=0, atol=1e-7)
    front = LogMelFrontEnd()
    torch.testing.assert_close(front.window, state["__S__.torchfb.spectrogram.window"], rtol=0, atol=0)


def test_logmel_matches_reference(reference_dir):
    wave = torch.from_numpy(np.load(reference_dir / "debug/input_A.npy").astype(np.float32))
    expected = torch.from_numpy(np.load(reference_dir / "debug/logmel_A.npy"))
    out = LogMelFrontEnd()(wave)
    assert out.shape == expected.shape == (10, 64, 352)
    assert (out - expected).abs().max().item() < 1e-4


def test_frame_count_is_frames_plus_two():
    front = LogMelFrontEnd()
    for frames in (1, 100, 200, 350):
        out = front(torch.randn(2, frames * 160 + 240) * 1000)
        assert out.shape == (2, 64, frames + 2)


def test_no_gradient_and_no_nan_on_silence():
    wave = torch.zeros(1, 16240, requires_grad=True)
    out = LogMelFrontEnd()(wave)
    assert not out.requires_grad
    assert torch.isfinite(out).all()
