"""Where a training step's time goes: torch.profiler table of one ResNetSE34L+CAP step
(forward + backward + SGD) at --batch speakers x 3 crops x 200 frames. Not run by run_all.

    CAPSV_BENCH_THREADS=1 python bench/profile_train.py --batch 4
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import common  # noqa: F401  (thread setting, sys.path)
from bench_train import build, one_step

from capsv.train import precision


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--encoder", default="CAP")
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args()
    device = torch.device("cpu")
    net, objective, optimizer, waves, labels = build(args.encoder, args.batch, device)
    scaler = precision.Scaler(device, False)
    one_step(net, objective, optimizer, waves, labels, args.batch, device, False, scaler)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        one_step(net, objective, optimizer, waves, labels, args.batch, device, False, scaler)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                    max_name_column_width=40))


if __name__ == "__main__":
    main()
