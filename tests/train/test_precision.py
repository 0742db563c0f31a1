"""--mixedprec (bfloat16 autocast on CPU), the float32 front end under autocast, and
--channels_last."""
from __future__ import annotations

import copy
import json
import math

import torch

from capsv.models import SpeakerNet
from capsv.models.checkpoint import load_model
from capsv.models.features import LogMelFrontEnd
from capsv.train.precision import Scaler, autocast, maybe_channels_last
from capsv.train import train

from speech_like import make_corpus, write_train_list


def test_mixedprec_trains_on_cpu_with_a_finite_loss(tmp_path):
    torch.set_num_threads(1)
    write_train_list(str(tmp_path / "train.txt"), make_corpus(str(tmp_path / "wav"), 4, 2, seconds=(0.3, 0.5)))
    summary = train(dict(model="ResNetSE34L", encoder_type="CAP", nOut=16, trainfunc="proto",
                         global_clf=True, nSpeakers=2, batch_size=2, max_frames=10, max_epoch=1,
                         train_list=str(tmp_path / "train.txt"), train_path=str(tmp_path / "wav"),
                         save_path=str(tmp_path / "run"), nDataLoaderThread=0, no_progress=True,
                         device="cpu", mixedprec=True))
    assert summary.final_epoch == 1 and math.isfinite(summary.loss)
    row = json.loads(open(tmp_path / "run/result/metrics.jsonl").readline())
    assert row["steps"] == 2 and math.isfinite(row["loss"])
    ckpt = torch.load(summary.checkpoint, weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())   # master weights fp32


def test_log_mel_stays_float32_under_autocast():
    front = LogMelFrontEnd()
    wave = torch.randn(2, 3200) * 1000
    with autocast(torch.device("cpu"), True):
        out = front(wave)
        assert torch.matmul(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, front(wave))
    assert not Scaler(torch.device("cpu"), True).active      # bf16 needs no loss scaling


def _gradients(net: torch.nn.Module, wave: torch.Tensor, target: torch.Tensor) -> dict:
    net.zero_grad()
    emb = net.embed(wave.to(target.dtype))
    (-torch.nn.functional.cosine_similarity(emb, target).mean()).backward()
    return {n: p.grad.double() for n, p in net.named_parameters() if p.grad is not None}


def _relative_error(grads: dict, reference: dict) -> float:
    err = sum(((grads[n] - reference[n]) ** 2).sum() for n in reference)
    return float((err / sum((g ** 2).sum() for g in reference.values())).sqrt())


def test_channels_last_gradients_stay_near_float64_like_the_default_layouts():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = SpeakerNet("ResNetSE34", "TAP", nOut=64).train()
    wave, target = torch.randn(8, 8160) * 1000, torch.randn(8, 64)
    reference = _gradients(copy.deepcopy(net).double(), wave, target.double())
    default = _gradients(copy.deepcopy(net), wave, target)
    nhwc = copy.deepcopy(net)
    maybe_channels_last(nhwc, True)
    assert nhwc.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert {n for n, _ in nhwc.named_parameters()} == {n for n, _ in net.named_parameters()}
    channels_last = _gradients(nhwc, wave, target)
    # float32 rounding leaves 1e-4 to 1.5e-2 (default) and 2e-3 to 3e-2 (channels-last: its sums
    # over time and frequency lose more to cancellation in the SE gates); a layout bug
    # (a transposed or misplaced gradient) would leave ~1
    assert _relative_error(default, reference) < 0.05
    assert _relative_error(channels_last, reference) < 0.1
    for name in reference:
        if name.endswith("conv1.weight") or name.endswith("conv2.weight"):
            cosine = torch.nn.functional.cosine_similarity(channels_last[name].flatten(),
                                                           reference[name].flatten(), dim=0)
            assert cosine > 0.99, name


def test_a_channels_last_run_checkpoints_weights_any_model_loads(tmp_path):
    torch.set_num_threads(1)
    write_train_list(str(tmp_path / "train.txt"), make_corpus(str(tmp_path / "wav"), 4, 2, seconds=(0.3, 0.5)))
    config = dict(model="ResNetSE34", encoder_type="TAP", nOut=16, trainfunc="proto",
                  global_clf=True, nSpeakers=2, batch_size=2, max_frames=10, max_epoch=1,
                  train_list=str(tmp_path / "train.txt"), train_path=str(tmp_path / "wav"),
                  save_path=str(tmp_path / "run"), nDataLoaderThread=0, no_progress=True,
                  device="cpu", channels_last=True)
    summary = train(config)
    assert summary.final_epoch == 1 and math.isfinite(summary.loss)
    loaded = load_model(summary.checkpoint)[0]
    assert loaded.backbone.conv1.weight.is_contiguous()       # a plain model, NCHW
    trained = copy.deepcopy(loaded)
    maybe_channels_last(trained, True)
    wave = torch.randn(2, 4000) * 1000
    with torch.no_grad():
        torch.testing.assert_close(trained.embed(wave), loaded.embed(wave), rtol=1e-4, atol=1e-4)
    # the layout is how a run executes, not what it computes: a resume may drop the flag
    train(dict(config, channels_last=False, max_epoch=2))
    rows = [json.loads(line) for line in open(tmp_path / "run/result/metrics.jsonl")]
    assert [row["epoch"] for row in rows] == [1, 2]
