"""Which training settings make the demo learn most in its fixed budget (issue 17).

Trains the demo's two networks (capsv.demo) on the demo's procedural corpus with variants of
its plan, several at once, and reports each one's EER and minDCF on the demo's trials along
the run (whole utterances, as the demo scores them). The learning dynamics, not the speed,
are what is compared, so the sweep may run on a GPU (many small runs side by side); the
chosen plan is then confirmed on the CPU by ``capsv demo`` itself.

    python bench/learning/demo_sweep.py --device cuda --jobs 14 --out sweep-out
    python bench/learning/demo_sweep.py --device cpu --jobs 2 --only base lr0.02 --seeds 0

Writes ``OUT/runs.jsonl`` (one row per finished run, appended as they finish) and
``OUT/summary.md`` (variants ranked by their mean final EER over seeds).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "src"))

from capsv import demo  # noqa: E402

# The variants below change the demo's plan as it was when they were measured (2026-12-03/04):
# ResNetSE34L, LR 0.005, 240 steps of 0.5 s crops, default layout. The demo now trains Thin
# ResNet-34 channels-last on 1.5 s crops ("demo" below).
FULL = dataclasses.replace(demo.FULL, model="ResNetSE34L", lr=0.005, steps=240, max_frames=50,
                           channels_last=False)
CROPS = FULL.steps * FULL.batch_size * FULL.n_speakers   # the demo's crop budget


def _same_crops(batch_size: int, n_speakers: int = 2, frames: int = 50, times: float = 1.0) -> dict:
    """A plan with the demo's budget of crop-seconds at another batch or crop length."""
    steps = round(times * CROPS * FULL.max_frames / (batch_size * n_speakers * frames))
    return dict(batch_size=batch_size, n_speakers=n_speakers, max_frames=frames, steps=steps)


def _thin(**changes) -> dict:
    """Thin ResNet-34 at LR 0.01 (the demo's backbone and LR since 2026-12-04), plus ``changes``."""
    return dict(model="ResNetSE34", lr=0.01, **changes)


def _demo(times: int = 1) -> dict:
    """What ``capsv demo`` trains now, for ``times`` its steps."""
    plan = {f.name: getattr(demo.FULL, f.name) for f in dataclasses.fields(demo.FULL)
            if f.name != "corpus"}
    return {**plan, "steps": times * demo.FULL.steps}


# name -> (changes to the DemoPlan, changes to the trainer's config)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    "lr0.01": (dict(lr=0.01), {}),
    "lr0.02": (dict(lr=0.02), {}),
    "lr0.04": (dict(lr=0.04), {}),
    "b16": (_same_crops(16), {}),
    "b16-lr0.01": ({**_same_crops(16), "lr": 0.01}, {}),
    "b16-lr0.02": ({**_same_crops(16), "lr": 0.02}, {}),
    "b8-lr0.01": ({**_same_crops(8), "lr": 0.01}, {}),
    "b64-lr0.01": ({**_same_crops(64), "lr": 0.01}, {}),
    "b64-lr0.02": ({**_same_crops(64), "lr": 0.02}, {}),
    "crop100-lr0.01": ({**_same_crops(32, frames=100), "lr": 0.01}, {}),
    "crop30-lr0.01": ({**_same_crops(32, frames=30), "lr": 0.01}, {}),
    "n3-lr0.01": ({**_same_crops(21, n_speakers=3), "lr": 0.01}, {}),
    "clf0.3-lr0.01": (dict(lr=0.01), dict(global_clf_weight=0.3)),
    "clf3-lr0.01": (dict(lr=0.01), dict(global_clf_weight=3.0)),
    "noclf-lr0.01": (dict(lr=0.01), dict(global_clf=False)),
    "softmax-lr0.01": ({**_same_crops(64, n_speakers=1), "lr": 0.01},
                       dict(trainfunc="softmax", global_clf=False)),
    "aam-lr0.01": ({**_same_crops(64, n_speakers=1), "lr": 0.01},
                   dict(trainfunc="aamsoftmax", global_clf=False, margin=0.2, scale=30.0)),
    "am-lr0.01": ({**_same_crops(64, n_speakers=1), "lr": 0.01},
                  dict(trainfunc="amsoftmax", global_clf=False, margin=0.2, scale=30.0)),
    "softmaxproto-lr0.01": (dict(lr=0.01), dict(trainfunc="softmaxproto", global_clf=False)),
    "angleproto-lr0.01": (dict(lr=0.01), dict(trainfunc="angleproto")),
    "warm0-lr0.01": (dict(lr=0.01, warmup=0.0), {}),
    "warm0.2-lr0.02": (dict(lr=0.02, warmup=0.2), {}),
    "final0-lr0.01": (dict(lr=0.01), dict(final_lr=0.0)),
    "wd5e-5-lr0.01": (dict(lr=0.01), dict(weight_decay=5e-5)),
    "sgd0.1": ({}, dict(optimizer="sgd", lr=0.1)),
    "sgd0.3": ({}, dict(optimizer="sgd", lr=0.3)),
    # what more compute would buy: is the target within reach of the recipe at all?
    "2x-lr0.01": (dict(lr=0.01, steps=2 * FULL.steps), {}),
    "4x-lr0.01": (dict(lr=0.01, steps=4 * FULL.steps), {}),
    # the paper's other backbone, Thin ResNet-34: about 2.4x the crops/s of ResNetSE34L on one
    # core at 0.5 s crops, so the same CPU-seconds buy 2.4x the steps
    "thin-lr0.01": (dict(model="ResNetSE34", lr=0.01, steps=round(2.4 * FULL.steps)), {}),
    "thin-crop100-lr0.01": ({**_same_crops(32, frames=100, times=2.2), "lr": 0.01,
                             "model": "ResNetSE34"}, {}),
    "thin4x-lr0.01": (dict(model="ResNetSE34", lr=0.01, steps=4 * FULL.steps), {}),
    "thin6x-lr0.01": (dict(model="ResNetSE34", lr=0.01, steps=6 * FULL.steps), {}),
    "thin3x-lr0.02": (dict(model="ResNetSE34", lr=0.02, steps=3 * FULL.steps), {}),
    "demo": (_demo(), {}),                             # what `capsv demo` trains now
    # how much longer would the demo's plan have to train to beat the baseline's minDCF?
    # (the cosine schedule spans each run, so every length is a finished run)
    "demo-x2": (_demo(2), {}),
    "demo-x4": (_demo(4), {}),
    "demo-x8": (_demo(8), {}),
    # the demo's plan of 2026-12-04 morning (Thin, 720 steps, LR 0.01), then with speed
    # perturbation: 0.9x / 1.1x copies as new speakers (300 ids), so that near-identical
    # voices (a speaker and its VTL/F0-shifted copy) meet in the batches
    "thin720": (_thin(steps=720), {}),
    "demo-sp": (_thin(steps=720), dict(speed_perturb=True)),
    # channels-last convolutions: 1.24-1.29x the steps/s of Thin ResNet-34 on a core
    "thin720-cl": (_thin(steps=720, channels_last=True), {}),
    "thin900-cl": (_thin(steps=900, channels_last=True), {}),
    # longer crops, the same crop-seconds as thin900-cl (thin-crop150-cl-360: 20 % more)
    "thin-crop100-cl": (_thin(steps=450, max_frames=100, channels_last=True), {}),
    "thin-crop150-cl": (_thin(steps=300, max_frames=150, channels_last=True), {}),
    "thin-crop150-cl-360": (_thin(steps=360, max_frames=150, channels_last=True), {}),
    "thin-crop200-cl": (_thin(steps=224, max_frames=200, channels_last=True), {}),
}


# classifier losses train instance-wise poolings only: CAP scores pairs (capsv.train.losses)
TAP_ONLY = {"softmax-lr0.01", "aam-lr0.01", "am-lr0.01"}


def variant_config(name: str, encoder: str, corpus_dir: str, save_path: str, device: str = "cpu",
                   seed: int = 0, steps_factor: float = 1.0) -> tuple[demo.DemoPlan, dict]:
    """The demo's plan and trainer config for one variant (what ``capsv demo`` would train)."""
    plan_changes, config_changes = VARIANTS[name]
    plan = dataclasses.replace(FULL, **plan_changes)
    plan = dataclasses.replace(plan, steps=max(2, round(plan.steps * steps_factor)))
    config = demo.training_config(encoder, plan, corpus_dir, save_path)
    config.update(device=device, seed=seed, **config_changes)
    return plan, config


def run_one(name: str, seed: int, data_dir: str, corpus_dir: str, device: str,
            steps_factor: float = 1.0, encoders: tuple = demo.ENCODERS,
            tf32: bool = True) -> dict:
    """Train one variant with one seed (one thread) and return its curve."""
    import torch
    torch.set_num_threads(1)
    # cuDNN convolutions default to TF32 on Ampere and later; off, a GPU run rounds like the CPU
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32 and torch.backends.cuda.matmul.allow_tf32
    exp_dir = os.path.join(data_dir, "exps", f"{name}-s{seed}")
    shutil.rmtree(exp_dir, ignore_errors=True)
    os.makedirs(exp_dir)
    plan = variant_config(name, encoders[0], corpus_dir, exp_dir, steps_factor=steps_factor)[0]
    rows = {}
    for encoder in encoders:
        if encoder == "CAP" and name in TAP_ONLY:
            continue
        _, config = variant_config(name, encoder, corpus_dir, os.path.join(exp_dir, encoder),
                                   device, seed, steps_factor)
        os.makedirs(config["save_path"])
        started = time.time()
        demo._train_logged(config, os.path.join(config["save_path"], "train.log"))
        curve = demo._rows(os.path.join(config["save_path"], "result", "curve.jsonl"))
        epochs = demo._rows(os.path.join(config["save_path"], "result", "metrics.jsonl"))
        rows[encoder] = {"curve": [{k: r.get(k) for k in ("steps", "train_seconds", "EER",
                                                          "minDCF_p0.05")} for r in curve],
                         "first_loss": epochs[0]["loss"] if epochs else None,
                         "last_loss": epochs[-1]["loss"] if epochs else None,
                         "wall_s": round(time.time() - started, 1)}
    shutil.rmtree(exp_dir, ignore_errors=True)
    plan_changes, config_changes = VARIANTS[name]
    return {"variant": name, "seed": seed, "plan": plan_changes, "config": config_changes,
            "steps": plan.steps, "tf32": tf32, **rows}


def summarise(rows: list[dict], baselines: dict) -> str:
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)

    def final(row, encoder, key="EER"):
        if encoder not in row or not row[encoder]["curve"]:
            return float("nan")
        return row[encoder]["curve"][-1][key]

    def mean(values):
        return sum(values) / len(values)

    ranked = sorted(by_variant.items(),
                    key=lambda kv: mean([final(r, "CAP") if "TAP" not in r else
                                         final(r, "TAP") if "CAP" not in r else
                                         min(final(r, "TAP"), final(r, "CAP")) for r in kv[1]]))
    lines = ["| variant | steps | seeds | TAP EER | CAP EER | TAP minDCF | CAP minDCF | CAP curve (EER by step) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, group in ranked:
        curve = " / ".join(f"{c['EER']:.1f}" for c in group[0].get("CAP", {}).get("curve", []))
        lines.append(
            f"| {name} | {group[0]['steps']} | {len(group)} "
            f"| {mean([final(r, 'TAP') for r in group]):.2f} "
            f"| {mean([final(r, 'CAP') for r in group]):.2f} "
            f"| {mean([final(r, 'TAP', 'minDCF_p0.05') for r in group]):.3f} "
            f"| {mean([final(r, 'CAP', 'minDCF_p0.05') for r in group]):.3f} | {curve} |")
    best = min(baselines.values(), key=lambda m: m["EER"])
    head = ("Baselines: " + ", ".join(f"{k} {v['EER']:.2f} % (minDCF {v['minDCF_p0.05']:.3f})"
                                      for k, v in baselines.items())
            + f"; the demo target is EER <= {0.7 * best['EER']:.2f} %.\n\n")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="default: 0 1")
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), metavar="VARIANT",
                        help="these variants only: " + ", ".join(VARIANTS))
    parser.add_argument("--data", default="data/demo-sweep", help="corpus and run folders")
    parser.add_argument("--out", default="bench/learning/demo_sweep",
                        help="runs.jsonl and summary.md (default: %(default)s)")
    parser.add_argument("--corpus_workers", type=int, default=None,
                        help="processes that generate the corpus (default: the cores)")
    parser.add_argument("--encoders", nargs="+", default=list(demo.ENCODERS), choices=demo.ENCODERS,
                        help="poolings to train (default: both)")
    parser.add_argument("--corpus_set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="change the demo corpus (capsv.prep.synth.corpus.CorpusConfig fields)")
    parser.add_argument("--steps_factor", type=float, default=1.0,
                        help="scale every variant's steps (a smoke run: 0.02)")
    parser.add_argument("--no_tf32", action="store_true",
                        help="on a GPU, convolutions in full float32 as on the CPU (cuDNN's "
                             "default is TF32)")
    parser.add_argument("--timeout", type=float, default=4 * 3600,
                        help="seconds for the whole sweep; runs not finished by then are "
                             "reported as missing (default: %(default)s)")
    args = parser.parse_args(argv)
    changes = {}
    for item in args.corpus_set:
        key, _, value = item.partition("=")
        if not value or not hasattr(FULL.corpus, key):
            parser.error(f"--corpus_set {item!r}: expected FIELD=VALUE with a CorpusConfig field")
        changes[key] = type(getattr(FULL.corpus, key))(value)
    # two sweeps in one --data folder would delete each other's run folders (same names)
    from capsv.runlock import RunLockError, run_lock
    try:
        with run_lock(args.data):
            return sweep(args, changes)
    except RunLockError:
        print(f"error: --data {args.data} is in use by another demo sweep (lock file "
              f"{os.path.join(args.data, 'run.lock')}); wait for it or give another --data",
              file=sys.stderr)
        return 2


def sweep(args, changes: dict) -> int:
    """Generate the corpus, score the baselines, train every (variant, seed) in a pool."""
    os.makedirs(args.out, exist_ok=True)
    corpus = dataclasses.replace(FULL.corpus, **changes)
    corpus_dir = demo.corpus_folder(args.data, "full", corpus)
    summary = demo.generate_corpus(corpus, corpus_dir, workers=args.corpus_workers, progress=False)
    print(f"corpus {corpus_dir}: {summary.n_files} files, {summary.audio_seconds / 60:.1f} min, "
          f"{summary.elapsed:.0f} s", flush=True)
    from capsv.evaluation.baseline import evaluate_baselines
    test_list = os.path.join(corpus_dir, "veri_test.txt")
    results = evaluate_baselines(test_list, corpus_dir, stats=tuple(s for _, s in demo.BASELINES))
    baselines = {name: results[stats].metrics.as_dict() for name, stats in demo.BASELINES}
    print(json.dumps(baselines), flush=True)

    names = args.only or list(VARIANTS)
    jobs = [(name, seed) for seed in args.seeds for name in names
            if not (name in TAP_ONLY and args.encoders == ["CAP"])]
    rows, pending = [], set(jobs)
    context = multiprocessing.get_context("spawn")
    # a plain `kill` of the sweep must also stop its workers: run the cleanup below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pool = cf.ProcessPoolExecutor(args.jobs, mp_context=context, max_tasks_per_child=1)
    futures = {pool.submit(run_one, n, s, args.data, corpus_dir, args.device, args.steps_factor,
                           tuple(args.encoders), not args.no_tf32): (n, s) for n, s in jobs}
    try:
        for future in cf.as_completed(futures, timeout=args.timeout):
            name, seed = futures[future]
            pending.discard((name, seed))
            try:
                row = future.result()
            except Exception as exc:            # one broken variant must not lose the others
                print(f"{name} seed {seed}: failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            rows.append(row)
            record(row, rows, baselines, args.out, args.encoders)
    except cf.TimeoutError:
        for name, seed in sorted(pending):
            print(f"{name} seed {seed}: not finished within --timeout {args.timeout:g} s", flush=True)
    finally:                                    # Ctrl-C or the timeout: leave nothing running
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
    return 1 if pending else 0


def record(row: dict, rows: list[dict], baselines: dict, out: str, encoders) -> None:
    """Append one finished run to OUT/runs.jsonl, print it and rewrite OUT/summary.md."""
    with open(os.path.join(out, "runs.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print(f"{row['variant']} s{row['seed']}: " + ", ".join(
        f"{e} {row[e]['curve'][-1]['EER']:.2f} % ({row[e]['wall_s']} s)" for e in encoders if e in row),
        flush=True)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(summarise(rows, baselines))


if __name__ == "__main__":
    sys.exit(main())
