"""GPU rows of the benchmarks (issue 14), run by bench/gpu.sh on a CUDA machine.

Measures, each after a warm-up, with torch.cuda.synchronize() around the timed region:

- train_step: one optimizer step of ResNetSE34L + TAP / CAP, prototypical loss with the
  global classifier over 5,994 speakers, at the paper batch (200 speakers x 3 crops of 200
  frames), fp32 and ``--mixedprec`` (capsv.train.precision): crops/s;
- extraction: ``SpeakerNet.frames`` of 10 crops x 350 frames per file, 16 files a batch,
  plus the CAP meta-projection: files/s;
- cap_scoring: ``capsv.evaluation.cap_scoring.GroupedCapScorer`` on random features of the real shapes
  (10 crops x 128 x 88 frames) held on the GPU, trials grouped like VoxCeleb1-E (each support
  file with ~4 partners): pairs/s.

Prints one JSON row per figure and, with --out, writes them to a file. The loader rate that
feeds the GPU is measured by bench/scale/run.py (gpu.sh runs it at full list size).

    python bench/bench_gpu.py [--steps 10] [--out rows.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_train import build, one_step  # noqa: E402

from capsv.train import precision  # noqa: E402
from capsv.audio import crop_samples  # noqa: E402
from capsv.evaluation.cap_scoring import GroupedCapScorer  # noqa: E402
from capsv.models import SpeakerNet  # noqa: E402


def timed(fn, repeats: int, device) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda _: None)
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def train_step(encoder: str, mixedprec: bool, steps: int, device, batch: int = 200) -> dict:
    net, objective, optimizer, waves, labels = build(encoder, batch, device)
    scaler = precision.Scaler(device, mixedprec)
    seconds = timed(lambda: one_step(net, objective, optimizer, waves, labels, batch, device,
                                     mixedprec, scaler), steps, device)
    return {"figure": "train_step", "encoder": encoder, "mixedprec": mixedprec,
            "batch": f"{batch} x 3 crops of 200 frames", "step_s": round(seconds, 4),
            "crops_per_s": round(waves.shape[0] / seconds, 1)}


@torch.inference_mode()
def extraction(encoder: str, mixedprec: bool, repeats: int, device, files: int = 16) -> dict:
    net = SpeakerNet("ResNetSE34L", encoder, 512).to(device).eval()
    crops = (torch.randn(files * 10, crop_samples(350)) * 3000).to(device)

    def run():
        with precision.autocast(device, mixedprec):
            frames = net.frames(crops)
            if net.pairwise:
                net.pooling.project(frames)
            else:
                net.pooling(frames)
    seconds = timed(run, repeats, device)
    return {"figure": "extraction", "encoder": encoder, "mixedprec": mixedprec,
            "protocol": "10 crops x 350 frames", "files_per_s": round(files / seconds, 1)}


@torch.inference_mode()
def cap_scoring(repeats: int, device, n_files: int = 4000, partners: int = 4) -> dict:
    torch.manual_seed(0)
    net = SpeakerNet("ResNetSE34L", "CAP", 512).to(device).eval()
    frames = torch.randn(n_files, 10, 128, 88, device=device)
    proj = torch.nn.functional.normalize(torch.randn(n_files, 10, 88, 128, device=device), dim=-1)
    rng = np.random.default_rng(0)
    support = np.repeat(np.arange(n_files), partners)
    pairs = np.stack([support, rng.integers(0, n_files, len(support))], axis=1)
    scorer = GroupedCapScorer(net.pooling, frames, proj)
    seconds = timed(lambda: scorer.score(pairs), repeats, device)
    return {"figure": "cap_scoring", "trials": len(pairs), "files": n_files,
            "pairs_per_s": round(len(pairs) / seconds, 1),
            "voxceleb1_E_581480_trials_s": round(581_480 / (len(pairs) / seconds), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed repeats of each figure")
    p.add_argument("--out", help="also write the rows (JSON lines) to this file")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny CPU run of every figure, to check the script without a GPU")
    args = p.parse_args()
    if args.smoke:
        device, batch, files, steps = torch.device("cpu"), 4, 2, 1
    elif torch.cuda.is_available():
        device, batch, files, steps = torch.device("cuda"), 200, 16, args.steps
    else:
        print("bench_gpu.py: no CUDA device; these rows are for a GPU machine (--smoke checks "
              "the script on the CPU)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke run)"
    rows = [{"figure": "device", "name": name, "torch": torch.__version__, "cuda": torch.version.cuda}]
    for encoder in ("TAP", "CAP"):
        for mixedprec in (False, True):
            rows.append(train_step(encoder, mixedprec, steps, device, batch))
            rows.append(extraction(encoder, mixedprec, steps, device, files))
    rows.append(cap_scoring(max(1, steps // 3), device, n_files=200 if args.smoke else 4000))
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
