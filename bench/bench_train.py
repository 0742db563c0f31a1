"""Training throughput (crops/s) and achieved GFLOP/s of one training step, next to the
GFLOP/s of a 2048x2048 float32 matmul on the same machine.

One step = forward (log-mel, ResNetSE34L, pooling, proto loss + global classifier over 5994
speakers, as the paper) + backward + SGD step, on random int16-scale waves of the paper's batch
structure: --batch speakers x 3 crops (nSpeakers 3) x 200 frames (--batch 200 in the paper;
scaled down to fit a small CPU). FLOPs are counted with torch.utils.flop_counter on one
forward+backward (convolutions and matrix products; the STFT is not counted).

Variants: TAP and CAP in float32; CAP with --mixedprec (bf16 autocast on CPU, fp16+GradScaler on
CUDA); CAP with --compile (torch.compile of the backbone, in a subprocess with a time limit);
CAP with glibc's malloc told to keep freed memory (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_,
in a subprocess, since glibc reads them at start-up).

    python bench/bench_train.py [--batch 20] [--steps 3]     (run_all --quick: --batch 8 --steps 2)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import Timer, machine, row

from capsv import precision
from capsv.audio import crop_samples
from capsv.losses import Objective
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


def measure(encoder: str, batch: int, steps: int, device, mixedprec=False, compile_=False) -> dict:
    net, objective, optimizer, waves, labels = build(encoder, batch, device)
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
    step_s = sorted(times)[len(times) // 2]
    return {"step_s": round(step_s, 3), "crops_per_s": round(waves.shape[0] / step_s, 1),
            "first_step_s": round(warm.seconds, 2), "loss_finite": bool(torch.isfinite(torch.tensor(loss)))}


def _subprocess_variant(args, extra_env: dict, flag: str, timeout: int) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--only", flag, "--batch", str(args.batch),
           "--steps", str(args.steps)]
    try:
        proc = subprocess.run(cmd, env={**os.environ, **extra_env}, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=20, help="speakers per batch (x3 crops)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--only", choices=("cap", "cap_compile"), help=argparse.SUPPRESS)
    p.add_argument("--compile_timeout", type=int, default=300)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.only:           # a child run: one variant, its result as one line
        result = measure("CAP", args.batch, args.steps, device, compile_=args.only == "cap_compile")
        print("RESULT " + json.dumps(result), flush=True)
        return
    info = machine()
    peak = matmul_gflops()
    row("train", what="matmul 2048x2048 fp32", gflops=round(peak, 1), threads=info["threads"])
    flops = {enc: count_flops(enc, args.batch, device) for enc in ("TAP", "CAP")}
    crops = N_SPEAKERS * args.batch

    def report(name: str, encoder: str, result: dict, **extra) -> None:
        if "error" in result:
            row("train", what=name, measured=False, reason=result["error"], **extra)
            return
        gflops = flops[encoder] / result["step_s"] / 1e9
        row("train", what=name, batch=f"{args.batch}x{N_SPEAKERS}x200", **result,
            step_gflop=round(flops[encoder] / 1e9, 2), gflops=round(gflops, 1),
            pct_of_matmul=round(100 * gflops / peak, 1), threads=info["threads"], **extra)

    report("ResNetSE34L+TAP fp32", "TAP", measure("TAP", args.batch, args.steps, device))
    report("ResNetSE34L+CAP fp32", "CAP", measure("CAP", args.batch, args.steps, device))
    # bf16 on a CPU without bf16 units is ~10x slower: one timed step is enough to show it.
    mixed_steps = args.steps if device.type == "cuda" else 1
    report("ResNetSE34L+CAP --mixedprec", "CAP",
           measure("CAP", args.batch, mixed_steps, device, mixedprec=True),
           dtype="fp16+GradScaler" if device.type == "cuda" else "bf16 autocast")
    report("ResNetSE34L+CAP, malloc keeps freed memory", "CAP",
           _subprocess_variant(args, MALLOC_ENV, "cap", 600), env=" ".join(f"{k}={v}" for k, v in MALLOC_ENV.items()))
    report("ResNetSE34L+CAP fp32, plain malloc (subprocess)", "CAP",
           _subprocess_variant(args, {}, "cap", 600))
    report("ResNetSE34L+CAP --compile", "CAP",
           _subprocess_variant(args, {}, "cap_compile", args.compile_timeout))


if __name__ == "__main__":
    main()
