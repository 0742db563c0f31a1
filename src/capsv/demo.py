"""The whole mission on a laptop: built-in corpus -> train CAP and TAP -> verify unseen speakers.

``run_demo`` generates the procedural corpus (:mod:`capsv.prep.synth.corpus`) if it is not there,
trains ResNetSE34L with CAP and with TAP on its training speakers for a fixed number of epochs
(the full demo also stops early if a per-model time budget runs out, so it always ends),
scores the held-out speakers' trials with both models and with two hand-made baselines
(mean MFCC cosine, and MFCC mean+std cosine), prints a side-by-side table and writes a report
folder (DET curves, score histograms, scores, metrics).

The training recipe is the paper's (NP loss + global classifier, nSpeakers 3) scaled down to
CPU minutes: 0.5-1 s crops, 12-16 speakers per batch, Adam; bfloat16 autocast where the CPU
has bf16 instructions (``--mixedprec``; about 1.7x faster there); crops read in the training
process (``--nDataLoaderThread 0``: on 2 cores a loader process competes with the model for
them, and 0 was 1.5x faster). Evaluation uses 3 crops of
1.5-2 s per file instead of 10 of 3.5 s, because the demo's utterances are 1.5-4 s long.
The quick variant stops after a fixed number of epochs only, so its result does not depend
on the machine's speed (the test suite asserts it).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np

from .evaluation.baseline import evaluate_baselines
from .models.checkpoint import load_model
from .prep.synth.corpus import DEMO_CORPUS, SYNTH_VERSION, CorpusConfig, generate_corpus
from .evaluation.pipeline import evaluate_list
from .train.precision import reduced_precision_is_fast
from .evaluation.report import write_comparison, write_report
from .train import train
from .utils import atomic_write_text, resolve_device


@dataclass(frozen=True)
class DemoPlan:
    corpus: CorpusConfig
    max_epochs: int
    budget_s: float | None       # per model; training stops after the epoch that crosses it
    max_frames: int = 100
    batch_size: int = 16
    eval_frames: int = 200
    num_eval: int = 5
    lr: float = 0.002
    segs_per_speaker: int = 0    # utterances per speaker per epoch (0: all); smaller epochs stop closer to the budget


# 200 s per model: with `make install` (~90 s), the corpus (~40 s), the baselines and the
# evaluations, `make demo` from a fresh clone stays under 10 minutes on 2 cores.
FULL = DemoPlan(DEMO_CORPUS, max_epochs=60, budget_s=200.0, num_eval=3, segs_per_speaker=6)
QUICK = DemoPlan(dataclasses.replace(DEMO_CORPUS, speakers=96, test_speakers=20, utterances=6,
                                     test_utterances=16, min_seconds=1.5, max_seconds=2.5,
                                     trials=2000),
                 max_epochs=10, budget_s=None, max_frames=50, batch_size=12, eval_frames=150,
                 num_eval=3, lr=0.004)
BASELINES = (("baseline: mean MFCC", "mean"), ("baseline: MFCC mean+std", "mean+std"))
SLUGS = {"baseline: mean MFCC": "baseline", "baseline: MFCC mean+std": "baseline_meanstd",
         "ResNetSE34L + TAP": "tap", "ResNetSE34L + CAP": "cap"}


@dataclass
class SystemResult:
    name: str
    scores: np.ndarray
    labels: np.ndarray
    metrics: dict
    train_seconds: float | None = None
    samples_per_s: float | None = None
    epochs: int | None = None


def _train_model(encoder: str, plan: DemoPlan, corpus_dir: str, exp_dir: str, progress: bool,
                 log) -> tuple[str, float, float, int]:
    """Train epoch by epoch until ``max_epochs`` or the time budget; returns
    (checkpoint, seconds, crops/s, epochs)."""
    base = dict(model="ResNetSE34L", encoder_type=encoder, trainfunc="proto", global_clf=True,
                nSpeakers=3, batch_size=plan.batch_size, max_frames=plan.max_frames,
                max_seg_per_spk=plan.segs_per_speaker or plan.corpus.utterances, optimizer="adam", lr=plan.lr,
                train_list=os.path.join(corpus_dir, "train_list.txt"), train_path=corpus_dir,
                test_list=None, save_path=exp_dir, nDataLoaderThread=0, seed=0,
                test_interval=10**6, no_progress=not progress,
                mixedprec=reduced_precision_is_fast(resolve_device("auto")))
    spent, crops_per_s, summary = 0.0, [], None
    if os.path.isdir(exp_dir):       # an earlier demo's run: train afresh, the budget is the point
        log(f"  {encoder}: replacing the earlier demo run in {exp_dir}")
        shutil.rmtree(exp_dir)
    os.makedirs(exp_dir)
    train_log = os.path.join(exp_dir, "train.log")
    log(f"  {encoder}: the training run's own log goes to {train_log}")
    for epoch in range(1, plan.max_epochs + 1):
        # One short run per epoch (each resumes the previous one): its start-up lines would
        # repeat every epoch on screen, so they go to the file; the line below is the summary.
        with open(train_log, "a", encoding="utf-8") as out, contextlib.redirect_stdout(out):
            summary = train({**base, "max_epoch": epoch})
        if summary.epochs_run:
            spent += summary.wall_time_s
            crops_per_s.append(summary.samples_per_s)
        log(f"  {encoder}: epoch {summary.final_epoch}, loss {summary.loss:.3f}, "
            f"accuracy {summary.acc:.1f}%, {spent:.0f} s")
        if plan.budget_s is not None and spent >= plan.budget_s:
            log(f"  {encoder}: time budget of {plan.budget_s:.0f} s reached after epoch {epoch}")
            break
    return summary.checkpoint, spent, float(np.mean(crops_per_s)) if crops_per_s else 0.0, summary.final_epoch


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


def run_demo(data_dir: str = "data/demo", report_dir: str = "demo_report", quick: bool = False,
             progress: bool = True, log=print, plan: DemoPlan | None = None) -> list[SystemResult]:
    """Run the demo; returns the two baselines', TAP's and CAP's results (in that order).
    ``plan`` replaces the quick or full plan (tests use a tiny one)."""
    plan = plan or (QUICK if quick else FULL)
    start = time.time()
    corpus_dir = corpus_folder(data_dir, "quick" if quick else "full", plan.corpus)
    log(f"[1/4] corpus: {corpus_dir}")
    corpus = generate_corpus(plan.corpus, corpus_dir, progress=progress)
    log(f"  {corpus.n_files} clips, {corpus.audio_seconds / 60:.1f} min of audio "
        f"({'already there' if corpus.status == 'done' else f'generated in {corpus.elapsed:.0f} s'})")
    test_list = os.path.join(corpus_dir, "veri_test.txt")

    log("[2/4] baselines: mean MFCC cosine, MFCC mean+std cosine")
    results = evaluate_baselines(test_list, corpus_dir, stats=tuple(s for _, s in BASELINES))
    systems = [SystemResult(name, results[stats].scores, results[stats].labels,
                            results[stats].metrics.as_dict()) for name, stats in BASELINES]

    for step, encoder in ((3, "TAP"), (4, "CAP")):
        log(f"[{step}/4] train + evaluate ResNetSE34L with {encoder}")
        exp_dir = os.path.join(data_dir, "exps", f"{'quick' if quick else 'full'}_{encoder}")
        ckpt, seconds, rate, epochs = _train_model(encoder, plan, corpus_dir, exp_dir, progress, log)
        net, _ = load_model(ckpt)
        result = evaluate_list(net, test_list, corpus_dir, plan.eval_frames, plan.num_eval,
                               progress=progress)
        labels = np.array([t.label for t in result.trials])
        systems.append(SystemResult(f"ResNetSE34L + {encoder}", result.scores, labels,
                                    result.metrics.as_dict(), seconds, rate, epochs))
    _write(report_dir, systems, test_list, plan, time.time() - start)
    return systems


def _write(report_dir: str, systems: list[SystemResult], test_list: str, plan: DemoPlan,
           total_s: float) -> None:
    from .data.lists import read_trials
    trials = read_trials(test_list)
    for s in systems:
        write_report(os.path.join(report_dir, SLUGS[s.name]), s.scores, s.labels, trials, name=s.name,
                     extra={"train_seconds": s.train_seconds, "samples_per_s": s.samples_per_s,
                            "epochs": s.epochs})
    write_comparison(report_dir, {s.name: (s.scores, s.labels) for s in systems},
                     title="Unseen speakers of the built-in corpus")
    table = format_table(systems)
    atomic_write_text(os.path.join(report_dir, "table.txt"), table + "\n")
    atomic_write_text(os.path.join(report_dir, "demo.json"), json.dumps({
        "plan": dataclasses.asdict(plan), "total_seconds": total_s,
        "systems": {s.name: {**s.metrics, "train_seconds": s.train_seconds,
                             "samples_per_s": s.samples_per_s, "epochs": s.epochs} for s in systems},
    }, indent=2, default=str) + "\n")
