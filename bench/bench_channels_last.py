"""``--channels_last`` against the default (NCHW) layout: training steps per second on the CPU.

One step is what ``capsv train`` runs: log-mel, backbone, pooling, NP loss + global classifier
over the demo corpus' 100 training speakers, backward, Adam. Built by ``TrainState.build``
from a ``TrainConfig``, so the flag goes through the trainer's own code. Every measurement is a
fresh process with one thread; ``--pairs`` runs two at once (one per core, as the demo trains
TAP and CAP side by side). The layouts alternate for ``--repeats`` rounds so that the load of
this shared machine hits both alike; the median step of each round is reported.

``--isa avx2`` also measures both layouts with oneDNN and ATen limited to AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``): how a CPU without AVX-512 fares.

    python bench/bench_channels_last.py                        # the demo's step, both backbones
    python bench/bench_channels_last.py --frames 200 --speakers 16 --crops 3 --isa avx2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import machine, median, row  # noqa: E402

ISAS = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}


def measure(model: str, encoder: str, speakers: int, crops: int, frames: int, steps: int,
            channels_last: bool) -> dict:
    """Median seconds of ``steps`` training steps (after two warm-up steps), in this process."""
    import torch
    from capsv.audio import crop_samples
    from capsv.train import TrainConfig, forward_batch
    from capsv.train.state import TrainState
    torch.set_num_threads(1)
    cfg = TrainConfig(model=model, encoder_type=encoder, trainfunc="proto", global_clf=True,
                      nSpeakers=crops, batch_size=speakers, max_frames=frames, optimizer="adam",
                      lr=0.01, channels_last=channels_last)
    state = TrainState.build(cfg, n_speakers=100, device=torch.device("cpu"))
    state.train_mode()
    waves = torch.randn(crops * speakers, crop_samples(frames)) * 3000
    labels = torch.arange(speakers).repeat(crops)
    times = []
    for i in range(steps + 2):
        started = time.perf_counter()
        loss = forward_batch(state.net, state.objective, waves, labels, speakers).loss
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - started)
    return {"step_s": median(times), "loss_finite": bool(torch.isfinite(loss))}


def _spawn(args, model: str, encoder: str, channels_last: bool, isa: str) -> subprocess.Popen:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", model, encoder,
           "--speakers", str(args.speakers), "--crops", str(args.crops),
           "--frames", str(args.frames), "--steps", str(args.steps)]
    if channels_last:
        cmd.append("--channels_last")
    env = {**os.environ, "OMP_NUM_THREADS": "1", **ISAS[isa]}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(proc: subprocess.Popen, timeout: float) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"no result within {timeout:g} s"}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (err.strip().splitlines() or ["no output"])[-1][:300]}


def one_round(args, model: str, channels_last: bool, isa: str) -> list[dict]:
    """One measurement: TAP alone, or TAP and CAP at once with --pairs."""
    encoders = ("TAP", "CAP") if args.pairs else ("TAP",)
    procs = [_spawn(args, model, enc, channels_last, isa) for enc in encoders]
    return [_collect(p, args.timeout) for p in procs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ResNetSE34", "ResNetSE34L"])
    p.add_argument("--speakers", type=int, default=32, help="speakers per batch (default: %(default)s)")
    p.add_argument("--crops", type=int, default=2, help="crops per speaker (default: %(default)s)")
    p.add_argument("--frames", type=int, default=50, help="frames per crop (default: %(default)s)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per process (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds (default: %(default)s)")
    p.add_argument("--pairs", action=argparse.BooleanOptionalAction, default=True,
                   help="TAP and CAP at once, one core each, as the demo trains (default: on)")
    p.add_argument("--isa", nargs="+", choices=sorted(ISAS), default=["native"],
                   help="instruction sets to measure (default: native)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per process")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "ENCODER"), help=argparse.SUPPRESS)
    p.add_argument("--channels_last", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = measure(*args.child, args.speakers, args.crops, args.frames, args.steps,
                         args.channels_last)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    info = machine()
    for model in args.models:
        for isa in args.isa:
            steps = {False: [], True: []}
            for _ in range(args.repeats):
                for layout in (False, True):
                    runs = one_round(args, model, layout, isa)
                    bad = [r["error"] for r in runs if "error" in r]
                    if bad:
                        print(f"error: {model} {isa} channels_last={layout}: {bad[0]}", file=sys.stderr)
                        return 1
                    steps[layout] += [r["step_s"] for r in runs]
            default, nhwc = median(steps[False]), median(steps[True])
            row("channels_last", model=model, isa=isa, pairs=args.pairs,
                batch=f"{args.speakers}x{args.crops}x{args.frames}",
                default_step_s=round(default, 3), channels_last_step_s=round(nhwc, 3),
                speedup=round(default / nhwc, 2),
                all_default=[round(s, 3) for s in steps[False]],
                all_channels_last=[round(s, 3) for s in steps[True]],
                threads_per_process=1, cpu=info.get("cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
