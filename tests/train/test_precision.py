"""--mixedprec (bfloat16 autocast on CPU) and the float32 front end under autocast."""
from __future__ import annotations

import json
import math

import torch

from capsv.models.features import LogMelFrontEnd
from capsv.train.precision import Scaler, autocast
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
