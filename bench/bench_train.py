"""Training throughput (crops/s) and achieved GFLOP/s of one training step, next to the
GFLOP/s of a 2048x2048 float32 matmul on the same machine (MKL sgemm via torch.mm) and of the
same product as a 1x1 convolution (oneDNN, the library that runs the backbone's convolutions).

One step = forward (log-mel, ResNetSE34L, pooling, proto loss + global classifier over 5994
speakers, as the paper) + backward + SGD step, on random int16-scale waves of the paper's batch
structure: --batch speakers x 3 crops (nSpeakers 3) x 200 frames (--batch 200 in the paper;
scaled down to fit a small CPU). FLOPs are counted with torch.utils.flop_counter on one
forward+backward (convolutions and matrix products; the STFT is not counted).

Every variant runs in its own fresh process (malloc settings are per process) and the variants
alternate for --repeats rounds; the median step of each is reported, the peaks are measured
before and after the rounds. Variants: TAP and CAP with glibc's malloc defaults
(CAPSV_MALLOC=default), CAP with capsv's mallopt (what `capsv train` does, capsv.allocator),
CAP with the MALLOC_* environment tip, CAP with mallopt + channels_last convolutions.
--mixedprec and --compile add those CAP variants (slow on a small CPU).

    python bench/bench_train.py [--batch 8] [--steps 3] [--repeats 2] [--mixedprec] [--compile]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import Timer, machine, median, row

from capsv import allocator
from capsv.train import precision
from capsv.audio import crop_samples
from capsv.train.losses import Objective
from capsv.models import SpeakerNet
from capsv.train import TrainConfig, forward_batch, make_optimizer

N_SPEAKERS = 3
TRAIN_SPEAKERS = 5994          # VoxCeleb2 dev: size of the global classifier
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "17179869184"}


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        with Timer() as t:
            torch.mm(a, b)
        best = min(best, t.seconds)
    return 2 * n ** 3 / best / 1e9


def build(encoder: str, batch: int, device: torch.device):
    torch.manual_seed(0)
    net = SpeakerNet("ResNetSE34L", encoder, 512).to(device).train()
    objective = Objective("proto", 512, TRAIN_SPEAKERS, global_clf=True).to(device)
    optimizer, _ = make_optimizer(TrainConfig(), list(net.parameters()) + list(objective.parameters()))
    waves = (torch.randn(N_SPEAKERS * batch, crop_samples(200)) * 3000).to(device)
    labels = torch.arange(batch, device=device).repeat(N_SPEAKERS)
    return net, objective, optimizer, waves, labels


def one_step(net, objective, optimizer, waves, labels, batch, device, mixedprec, scaler):
    with precision.autocast(device, mixedprec):
        out = forward_batch(net, objective, waves, labels, batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.backward(out.loss)
    scaler.step(optimizer)
    return out.loss.item()


def count_flops(encoder: str, batch: int, device) -> int:
    net, objective, _, waves, labels = build(encoder, batch, device)
    with FlopCounterMode(display=False) as counter:
        forward_batch(net, objective, waves, labels, batch).loss.backward()
    return counter.get_total_flops()


def conv_gflops(n: int = 2048, reps: int = 5) -> float:
    """The 2048^3 product as a 1x1 convolution: oneDNN's rate, the backbone's library."""
    x, w = torch.randn(1, n, n, 1), torch.randn(n, n, 1, 1)
    torch.nn.functional.conv2d(x, w)
    best = float("inf")
    for _ in range(reps):
        with Timer() as t:
            torch.nn.functional.conv2d(x, w)
        best = min(best, t.seconds)
    return 2 * n ** 3 / best / 1e9


def measure(encoder: str, batch: int, steps: int, device, mixedprec=False, compile_=False,
            channels_last=False) -> dict:
    net, objective, optimizer, waves, labels = build(encoder, batch, device)
    if channels_last:
        net.backbone.to(memory_format=torch.channels_last)
    precision.maybe_compile(net.backbone, compile_)
    scaler = precision.Scaler(device, mixedprec)
    with Timer() as warm:
        one_step(net, objective, optimizer, waves, labels, batch, device, mixedprec, scaler)
    times = []
    for _ in range(steps):
        with Timer() as t:
            loss = one_step(net, objective, optimizer, waves, labels, batch, device, mixedprec, scaler)
            if device.type == "cuda":
                torch.cuda.synchronize()
        times.append(t.seconds)
    return {"step_s": round(median(times), 3), "crops_per_s": round(waves.shape[0] / median(times), 1),
            "first_step_s": round(warm.seconds, 2), "loss_finite": bool(torch.isfinite(torch.tensor(loss)))}


# name -> (encoder, extra child flags, extra environment)
VARIANTS = {
    "TAP fp32, glibc malloc defaults": ("TAP", [], {"CAPSV_MALLOC": "default"}),
    "CAP fp32, glibc malloc defaults": ("CAP", [], {"CAPSV_MALLOC": "default"}),
    "CAP fp32, capsv mallopt (capsv train's default)": ("CAP", [], {}),
    "CAP fp32, MALLOC_* environment tip": ("CAP", [], MALLOC_ENV),
    "CAP fp32, mallopt + channels_last": ("CAP", ["--channels_last"], {}),
}


def _child(args, encoder: str, flags: list, extra_env: dict, timeout: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--only", encoder, "--batch", str(args.batch),
           "--steps", str(args.steps), *flags]
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV and k != "CAPSV_MALLOC"}
    try:
        proc = subprocess.run(cmd, env={**env, **extra_env}, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8, help="speakers per batch (x3 crops)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per process (median)")
    p.add_argument("--repeats", type=int, default=2, help="alternating rounds of the variants")
    p.add_argument("--mixedprec", action="store_true", help="add CAP --mixedprec")
    p.add_argument("--compile", action="store_true", help="add CAP --compile")
    p.add_argument("--compile_timeout", type=int, default=600)
    p.add_argument("--slow_only", action="store_true",
                   help="only the --mixedprec/--compile variants (with the peaks)")
    p.add_argument("--only", choices=("TAP", "CAP"), help=argparse.SUPPRESS)
    p.add_argument("--channels_last", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child_mixedprec", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child_compile", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.only:           # a child run: one variant, its result as one line
        malloc = allocator.keep_freed_memory()
        result = measure(args.only, args.batch, args.steps, device, mixedprec=args.child_mixedprec,
                         compile_=args.child_compile, channels_last=args.channels_last)
        print("RESULT " + json.dumps({**result, "malloc": malloc}), flush=True)
        return
    info = machine()
    peaks = {"mm": [matmul_gflops()], "conv": [conv_gflops()]}
    flops = {enc: count_flops(enc, args.batch, device) for enc in ("TAP", "CAP")}
    if args.slow_only:
        VARIANTS.clear()
    results = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, (encoder, flags, env) in VARIANTS.items():
            results[name].append(_child(args, encoder, flags, env, 600))
    slow = {}
    if args.mixedprec:
        slow["CAP --mixedprec, mallopt"] = ("CAP", ["--child_mixedprec", "--steps", "1"], {})
    if args.compile:
        slow["CAP --compile, mallopt"] = ("CAP", ["--child_compile"], {})
    for name, (encoder, flags, env) in slow.items():
        timeout = args.compile_timeout if "compile" in name else 1200
        results[name] = [_child(args, encoder, flags, env, timeout)]
        VARIANTS[name] = (encoder, flags, env)
    peaks["mm"].append(matmul_gflops())
    peaks["conv"].append(conv_gflops())
    mm, conv = (max(v) for v in (peaks["mm"], peaks["conv"]))
    row("train", what="matmul 2048x2048 fp32 (torch.mm, MKL)", gflops=round(mm, 1),
        all_gflops=[round(g, 1) for g in peaks["mm"]], threads=info["threads"])
    row("train", what="same product as a 1x1 conv2d (oneDNN)", gflops=round(conv, 1),
        all_gflops=[round(g, 1) for g in peaks["conv"]], threads=info["threads"])
    for name, runs in results.items():
        encoder = VARIANTS[name][0]
        good = [r for r in runs if "error" not in r]
        if not good:
            row("train", what=name, measured=False, reason=runs[0]["error"])
            continue
        step = median([r["step_s"] for r in good])
        gflops = flops[encoder] / step / 1e9
        row("train", what=name, batch=f"{args.batch}x{N_SPEAKERS}x200", step_s=round(step, 3),
            all_steps=[r["step_s"] for r in good], first_step_s=good[0]["first_step_s"],
            crops_per_s=round(N_SPEAKERS * args.batch / step, 1), malloc=good[0]["malloc"],
            step_gflop=round(flops[encoder] / 1e9, 2), gflops=round(gflops, 1),
            pct_of_matmul=round(100 * gflops / mm, 1), pct_of_conv1x1=round(100 * gflops / conv, 1),
            threads=info["threads"], loss_finite=good[0]["loss_finite"])


if __name__ == "__main__":
    main()
