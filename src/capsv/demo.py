"""The whole mission on a laptop: built-in corpus -> train CAP and TAP -> verify unseen speakers.

``run_demo`` generates the procedural corpus (:mod:`capsv.prep.synth.corpus`) if it is not there,
scores its held-out speakers' trials with two hand-made baselines (mean MFCC cosine, MFCC
mean+std cosine), trains a ResNet with TAP and with CAP, scores the same trials with both,
prints a side-by-side table and writes a report folder (DET curves, score histograms, scores,
metrics, ``learning_curve.png``: EER against training seconds).

The ResNet is the paper's Thin ResNet-34 (``ResNetSE34``), not the Fast one (``ResNetSE34L``):
on one core it trains at 2.4x the crops/s, so the demo's minutes buy 2.4x the steps, and it
reached 8 points lower EER in the same CPU-seconds. Its convolutions run channels-last
(``--channels_last``: 1.24-1.29x the steps/s on one core, the same learning within the noise).
The crops are 1.5 s long: for the same crop-seconds, CAP reached 22.0-22.7 % EER with them
(three seeds),
against 25-28 % with 0.5 s crops; TAP was at 24-29 % either way
(bench/learning/RESULTS.md, "The demo's budget").

Training follows the short-budget recipe that bench/learning measured on real voices
(configs/cpu_quick_*.yaml: Adam with a cosine schedule over the run, 32 speakers x 2 crops per
batch, NP loss + global classifier) and ends after a fixed number of optimiser steps, so a
slower CPU takes longer but reaches the same model; float32 everywhere (bf16 would make the
result depend on the CPU). The two networks train side by side in two
processes with one core each: on a 2-core machine that is faster than two threads each, one
after the other, because a thread per model wastes no time waiting for the other. The
trainer evaluates along the way (the learning curve) and, since most demo files are shorter
than one 3.5 s crop, scores whole utterances (capsv.evaluation.policy), as the demo's final scoring
does.

Where there is a GPU (``device="auto"``, or ``--device cuda``) both processes train on it, in
float32 with TF32 off; the plan is the same, so the GPU changes the time, not the recipe.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np

from .evaluation.baseline import evaluate_baselines
from .evaluation.pipeline import evaluate_list
from .evaluation.report import write_comparison, write_report
from .errors import CapsvError
from .models.checkpoint import load_model
from .prep.synth.corpus import DEMO_CORPUS, SYNTH_VERSION, TEST, CorpusConfig, generate_corpus
from .protocol import EVAL_FRAMES, NUM_EVAL
from .train import latest_checkpoint, train
from .utils import atomic_write_text, resolve_device


@dataclass(frozen=True)
class DemoPlan:
    corpus: CorpusConfig
    steps: int                   # optimiser steps per model: the same result on any machine
    model: str = "ResNetSE34"    # the paper's Thin ResNet-34: 2.4x the crops/s of ResNetSE34L on a core
    max_frames: int = 50
    batch_size: int = 32
    n_speakers: int = 2          # utterances per speaker in a batch (1 support + queries)
    lr: float = 0.01
    warmup: float = 0.05
    curve_points: int = 4        # evaluations along the run (learning_curve.png)
    eval_frames: int = EVAL_FRAMES  # the paper's; whole utterances when most test files are shorter
    num_eval: int = NUM_EVAL
    side_by_side: bool = True    # train TAP and CAP at once, each on half of the cores
    channels_last: bool = True   # NHWC convolutions: 1.24-1.29x the steps/s (bench/RESULTS.md)


# Sized for 10 minutes from a fresh clone on a 2-core machine without bf16 (6 min 54 s here):
# install ~60-90 s, corpus ~15 s, then TAP and CAP side by side, one core each, ~300 s.
FULL = DemoPlan(dataclasses.replace(DEMO_CORPUS, trials=1200), steps=300, max_frames=150)
QUICK = DemoPlan(dataclasses.replace(DEMO_CORPUS, speakers=96, test_speakers=20, utterances=6,
                                     test_utterances=16, min_seconds=1.5, max_seconds=2.5,
                                     trials=2000),
                 steps=60, batch_size=24, curve_points=2)
# What beating the baseline's minDCF took (bench/learning/RESULTS.md, "What it would take"):
# five times the training speakers, the same test speakers and trials, and eight times the
# steps. About 42 minutes on 2 CPU cores.
LONG = DemoPlan(dataclasses.replace(FULL.corpus, speakers=500,
                                    test_utterances=FULL.corpus.clips_per_speaker(TEST)),
                steps=8 * FULL.steps, max_frames=FULL.max_frames, curve_points=8)
PLANS = {"quick": QUICK, "full": FULL, "long": LONG}
BASELINES = (("baseline: mean MFCC", "mean"), ("baseline: MFCC mean+std", "mean+std"))
BASELINE_SLUGS = {"baseline: mean MFCC": "baseline", "baseline: MFCC mean+std": "baseline_meanstd"}
ENCODERS = ("TAP", "CAP")


class DemoError(CapsvError):
    """A demo step that failed; the message names its log."""


@dataclass
class SystemResult:
    name: str
    scores: np.ndarray
    labels: np.ndarray
    metrics: dict
    train_seconds: float | None = None
    samples_per_s: float | None = None
    epochs: int | None = None
    curve: list = dataclasses.field(default_factory=list)   # rows of result/curve.jsonl
    first_loss: float | None = None
    last_loss: float | None = None


def training_config(encoder: str, plan: DemoPlan, corpus_dir: str, exp_dir: str,
                    device: str = "cpu") -> dict:
    """The demo's recipe: bench/learning's short-budget one (configs/cpu_quick_*.yaml) on the
    procedural corpus, ended by a step count; evaluated along the way for the curve."""
    return dict(model=plan.model, encoder_type=encoder, trainfunc="proto", global_clf=True,
                nSpeakers=plan.n_speakers, batch_size=plan.batch_size, max_frames=plan.max_frames,
                max_seg_per_spk=500, optimizer="adam", lr=plan.lr, weight_decay=0.0,
                lr_schedule="cosine", warmup=plan.warmup, final_lr=0.02,
                max_steps=plan.steps, max_epoch=10**6, test_interval=10**6,
                eval_every_steps=max(1, plan.steps // plan.curve_points),
                eval_frames=plan.eval_frames, num_eval=plan.num_eval,
                train_list=os.path.join(corpus_dir, "train_list.txt"), train_path=corpus_dir,
                test_list=os.path.join(corpus_dir, "veri_test.txt"), test_path=corpus_dir,
                save_path=exp_dir, nDataLoaderThread=0, seed=0, no_progress=True,
                channels_last=plan.channels_last, device=device)


def _train_logged(config: dict, log_path: str) -> None:
    """Train with the run's own lines going to ``log_path`` (the screen shows a summary)."""
    with open(log_path, "a", encoding="utf-8") as out, contextlib.redirect_stdout(out):
        train(config)


def _train_in_child(config: dict, log_path: str, threads: int) -> None:
    """One model's training in its own process with ``threads`` threads; a failure is
    written to its log, which the parent names. It dies with the demo: a demo killed by
    SIGTERM or SIGKILL runs no cleanup, and the demo retrains from scratch anyway."""
    import torch
    from .workers import die_with_parent
    die_with_parent()
    torch.set_num_threads(threads)
    # float32 on a GPU too: TF32 convolutions (cuDNN's default on Ampere and later) round
    # differently from the CPU, and the demo's plan was measured in float32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _train_logged(config, log_path)
    except BaseException as exc:
        with open(log_path, "a", encoding="utf-8") as out:
            out.write(f"error: {type(exc).__name__}: {exc}\n")
        raise SystemExit(1)


def train_models(plan: DemoPlan, corpus_dir: str, exp_root: str, log,
                 device: str = "cpu") -> dict[str, str]:
    """Train TAP and CAP on ``device`` (side by side in two processes, or one after the other);
    returns {encoder: save_path}. Shows each model's epochs as they finish."""
    runs = {}
    for encoder in ENCODERS:
        exp_dir = os.path.join(exp_root, encoder)
        if os.path.isdir(exp_dir):    # an earlier demo's run: train afresh, the budget is the point
            log(f"  {encoder}: replacing the earlier demo run in {exp_dir}")
            shutil.rmtree(exp_dir)
        os.makedirs(exp_dir)
        runs[encoder] = exp_dir
    configs = {e: training_config(e, plan, corpus_dir, d, device) for e, d in runs.items()}
    logs = {e: os.path.join(d, "train.log") for e, d in runs.items()}
    for encoder in ENCODERS:
        log(f"  {encoder}: {plan.steps} steps of {plan.batch_size} speakers x {plan.n_speakers} "
            f"crops of {plan.max_frames / 100:.1f} s; log: {logs[encoder]}")
    if not plan.side_by_side:
        for encoder in ENCODERS:
            _train_logged(configs[encoder], logs[encoder])
        return runs
    threads = max(1, (os.cpu_count() or 2) // len(ENCODERS))
    context = multiprocessing.get_context("spawn")
    children = {e: context.Process(target=_train_in_child, args=(configs[e], logs[e], threads),
                                   name=f"demo-{e}") for e in ENCODERS}
    try:
        for child in children.values():
            child.start()
        _follow(children, runs, logs, log)
    finally:
        for child in children.values():         # Ctrl-C or a failure: leave nothing running
            if child.is_alive():
                child.terminate()
            child.join(timeout=30)
    return runs


def _follow(children: dict, runs: dict, logs: dict, log) -> None:
    """Wait for the training processes, printing each epoch as it lands in metrics.jsonl."""
    shown = {e: 0 for e in children}
    while True:
        for encoder, child in children.items():
            rows = _rows(os.path.join(runs[encoder], "result", "metrics.jsonl"))
            for row in rows[shown[encoder]:]:
                log(f"  {encoder}: epoch {row['epoch']}, {row['steps']} steps, loss "
                    f"{row['loss']:.3f}, {row['seconds']:.0f} s")
            shown[encoder] = len(rows)
            if child.exitcode not in (None, 0):
                raise DemoError(f"training {encoder} failed (exit status {child.exitcode}); "
                                f"see {logs[encoder]}")
        if all(child.exitcode == 0 for child in children.values()):
            return
        time.sleep(1.0)


def _rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _evaluate_run(encoder: str, exp_dir: str, test_list: str, corpus_dir: str, plan: DemoPlan,
                  progress: bool, log, device: str = "cpu") -> SystemResult:
    """Score the trials with the run's final model, under the protocol its trainer chose
    (stored beside its threshold: whole utterances when most test files are short)."""
    summary = latest_checkpoint(exp_dir, log=lambda *_: None)
    if summary is None:
        raise DemoError(f"training {encoder} left no checkpoint in {exp_dir}; see its train.log")
    _, path, ckpt = summary
    meta = ckpt.get("meta", {})
    protocol = meta.get("eval_protocol", {"eval_frames": plan.eval_frames, "num_eval": plan.num_eval})
    net, _ = load_model(path)
    result = evaluate_list(net, test_list, corpus_dir, protocol["eval_frames"], protocol["num_eval"],
                           device=device, progress=progress)
    labels = np.array([t.label for t in result.trials])
    epochs = _rows(os.path.join(exp_dir, "result", "metrics.jsonl"))
    seconds = sum(r["seconds"] for r in epochs)
    crops = sum(r["samples_per_s"] * r["seconds"] for r in epochs)
    what = "whole utterances" if protocol["eval_frames"] == 0 else \
        f"{protocol['num_eval']} crops of {protocol['eval_frames']} frames"
    log(f"  {encoder}: EER {result.metrics.eer:.2f} % ({what})")
    return SystemResult(system_name(plan, encoder), result.scores, labels,
                        result.metrics.as_dict(), seconds, crops / seconds if seconds else 0.0,
                        epochs[-1]["epoch"] if epochs else 0,
                        _rows(os.path.join(exp_dir, "result", "curve.jsonl")),
                        epochs[0]["loss"] if epochs else None, epochs[-1]["loss"] if epochs else None)


def system_name(plan: DemoPlan, encoder: str) -> str:
    return f"{plan.model} + {encoder}"


def _slug(name: str) -> str:
    """Report sub-folder of a system: the baselines' fixed names, a network's pooling."""
    return BASELINE_SLUGS.get(name) or name.rsplit(" + ", 1)[-1].lower()


def corpus_folder(data_dir: str, kind: str, corpus: CorpusConfig) -> str:
    """``DATA_DIR/<kind>-v<generator version>-<settings digest>``: a corpus made by another
    version or with other settings stays where it is, unused, instead of being refused."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(corpus), sort_keys=True).encode()).hexdigest()
    return os.path.join(data_dir, f"{kind}-v{SYNTH_VERSION}-{digest[:8]}")


def format_table(systems: list[SystemResult]) -> str:
    width = max(len("system"), *(len(s.name) for s in systems)) + 2
    header = f"{'system':<{width}}{'EER %':>6}{'minDCF.05':>11}{'minDCF.01':>11}{'train s':>9}{'crops/s':>9}"
    lines = [header, "-" * len(header)]
    for s in systems:
        train_s = f"{s.train_seconds:.0f}" if s.train_seconds is not None else "-"
        rate = f"{s.samples_per_s:.1f}" if s.samples_per_s is not None else "-"
        lines.append(f"{s.name:<{width}}{s.metrics['EER']:>6.2f}{s.metrics['minDCF_p0.05']:>11.3f}"
                     f"{s.metrics['minDCF_p0.01']:>11.3f}{train_s:>9}{rate:>9}")
    return "\n".join(lines)


def run_demo(data_dir: str = "data/demo", report_dir: str = "demo_report",
             plan: str | DemoPlan = "full", progress: bool = True, log=print,
             device: str = "auto") -> list[SystemResult]:
    """Run the demo; returns the two baselines', TAP's and CAP's results (in that order).
    ``plan``: a name in ``PLANS`` or a plan of its own (tests use a tiny one). ``device``:
    where the networks train and score ("auto": CUDA when available, else the CPU cores)."""
    kind, plan = (plan, PLANS[plan]) if isinstance(plan, str) else ("custom", plan)
    device = str(resolve_device(device))     # an unusable --device fails before any work
    start = time.time()
    corpus_dir = corpus_folder(data_dir, kind, plan.corpus)
    log(f"[1/4] corpus: {corpus_dir}")
    corpus = generate_corpus(plan.corpus, corpus_dir, progress=progress)
    log(f"  {corpus.n_files} clips, {corpus.audio_seconds / 60:.1f} min of audio "
        f"({'already there' if corpus.status == 'done' else f'generated in {corpus.elapsed:.0f} s'})")
    test_list = os.path.join(corpus_dir, "veri_test.txt")

    log("[2/4] baselines: mean MFCC cosine, MFCC mean+std cosine")
    results = evaluate_baselines(test_list, corpus_dir, stats=tuple(s for _, s in BASELINES))
    systems = [SystemResult(name, results[stats].scores, results[stats].labels,
                            results[stats].metrics.as_dict()) for name, stats in BASELINES]

    how = "side by side, one process each" if plan.side_by_side else "one after the other"
    log(f"[3/4] train {plan.model} with TAP and with CAP ({how}, on {device})")
    runs = train_models(plan, corpus_dir, os.path.join(data_dir, "exps", kind), log, device)

    log("[4/4] evaluate both networks on the held-out speakers")
    for encoder in ENCODERS:
        systems.append(_evaluate_run(encoder, runs[encoder], test_list, corpus_dir, plan, progress,
                                     log, device))
    _write(report_dir, systems, test_list, plan, time.time() - start, device)
    return systems


def _write(report_dir: str, systems: list[SystemResult], test_list: str, plan: DemoPlan,
           total_s: float, device: str = "cpu") -> None:
    from .data.lists import read_trials
    trials = read_trials(test_list)
    for s in systems:
        write_report(os.path.join(report_dir, _slug(s.name)), s.scores, s.labels, trials, name=s.name,
                     extra={"train_seconds": s.train_seconds, "samples_per_s": s.samples_per_s,
                            "epochs": s.epochs})
    write_comparison(report_dir, {s.name: (s.scores, s.labels) for s in systems},
                     title="Unseen speakers of the built-in corpus")
    plot_learning_curves(os.path.join(report_dir, "learning_curve.png"), systems, device)
    table = format_table(systems)
    atomic_write_text(os.path.join(report_dir, "table.txt"), table + "\n")
    atomic_write_text(os.path.join(report_dir, "demo.json"), json.dumps({
        "plan": dataclasses.asdict(plan), "device": device, "total_seconds": total_s,
        "systems": {s.name: {**s.metrics, "train_seconds": s.train_seconds,
                             "samples_per_s": s.samples_per_s, "epochs": s.epochs,
                             "first_loss": s.first_loss, "last_loss": s.last_loss,
                             "curve": s.curve} for s in systems},
    }, indent=2, default=str) + "\n")


def plot_learning_curves(path: str, systems: list[SystemResult], device: str = "cpu") -> None:
    """EER against training seconds for the networks, the baselines as flat lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    # baselines as flat lines in the legend: their EERs are often too close for text labels
    flat_styles = iter([":", "--", "-.", (0, (1, 3))])
    for s in systems:
        if s.curve:
            ax.plot([r["train_seconds"] for r in s.curve], [r["EER"] for r in s.curve],
                    marker="o", label=s.name)
        else:
            ax.axhline(s.metrics["EER"], linestyle=next(flat_styles, ":"), color="grey",
                       label=f"{s.name} ({s.metrics['EER']:.1f} %)")
    where = "one core per model" if device == "cpu" else f"both models on {device}"
    ax.set_xlabel(f"training seconds (wall clock, {where})")
    ax.set_ylabel("EER % on unseen speakers")
    ax.set_title("Learning curves of the demo")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
