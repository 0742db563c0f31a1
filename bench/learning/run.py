"""Learning per CPU-minute on real voices: train recipes under a processor-time budget and
evaluate the models along the way (not part of ``make test``).

    python bench/learning/run.py train quick --pooling CAP --minutes 20 --seed 0
    python bench/learning/run.py evaluate bench/learning/runs/quick-CAP-s0
    python bench/learning/run.py report
    python bench/learning/run.py batch jobs.txt --jobs 2      # one command per line, 2 at once

Every run trains ResNetSE34L with one thread and crops read in the training process
(``--nDataLoaderThread 0``), so ``--budget_clock cpu`` counts all the work: "20 CPU-minutes"
is 1,200 s of processor time of that one process. Two runs share the 2-core machine at once
without changing each other's budget. The model is kept every ``--every`` CPU-minutes
(``--keep_curve_models``); ``evaluate`` scores each kept model on the corpus' trials with
whole utterances and with the paper's 10 x 350-frame crops (evaluation time never counts).
The corpus: ``../shared/tools/ttscorpus`` (``make_corpus.py --preset dev``), in ``--corpus``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "bench"))
from variants import VARIANTS  # noqa: E402

RUNS = os.path.join(HERE, "runs")
CORPUS = os.environ.get("TTS_CORPUS", "/work/data/tts-dev")
PROTOCOLS = {"whole": (0, 1), "crops": (350, 10)}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_name(variant: str, pooling: str, seed: int, minutes: float) -> str:
    return f"{variant}-{pooling}-s{seed}-{minutes:g}m"


def train(args) -> int:
    flags = VARIANTS[args.variant]
    save = os.path.join(RUNS, run_name(args.variant, args.pooling, args.seed, args.minutes))
    cmd = [sys.executable, "-m", "capsv.cli", "train", "--model", "ResNetSE34L",
           "--encoder_type", args.pooling, *flags, "--seed", str(args.seed),
           "--train_list", os.path.join(args.corpus, "train_list.txt"),
           "--train_path", os.path.join(args.corpus, "wav"),
           "--save_path", save, "--nDataLoaderThread", "0", "--device", "cpu",
           "--budget_clock", "cpu", "--max_seconds", str(args.minutes * 60),
           "--eval_every_seconds", str(args.every * 60), "--keep_curve_models",
           "--max_epoch", "100000", "--test_interval", "100000", "--no_progress"]
    os.makedirs(save, exist_ok=True)
    with open(os.path.join(save, "command.txt"), "w") as f:
        f.write(" ".join(cmd) + "\n")
    env = dict(os.environ, **ONE_THREAD, PYTHONPATH=os.path.join(REPO, "src"))
    with open(os.path.join(save, "train.out"), "a") as out:
        return subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=args.minutes * 60 * 4 + 600).returncode


def trial_kinds(corpus: str) -> dict:
    kinds = {}
    with open(os.path.join(corpus, "meta", "trials.tsv")) as f:
        next(f)
        for line in f:
            label, a, b, kind = line.rstrip("\n").split("\t")
            kinds[(a, b)] = kind
    return kinds


def breakdown(scores: np.ndarray, labels: np.ndarray, kinds: list[str]) -> dict:
    """EER on all trials, on targets vs hard non-targets (same language and gender), on
    cross-session targets vs all non-targets; minDCF (p=0.05, 0.01) on all trials."""
    from capsv.evaluation.metrics import compute_metrics
    kinds = np.array(kinds)
    target = labels == 1
    hard = np.char.startswith(kinds.astype(str), "nontarget-hard")
    cross = target & (kinds != "target-same-session")
    everything = compute_metrics(scores, labels)
    hard_only = compute_metrics(scores[target | hard], labels[target | hard])
    cross_only = compute_metrics(scores[cross | ~target], labels[cross | ~target])
    return {"EER_all": float(everything.eer), "EER_hard": float(hard_only.eer),
            "EER_cross": float(cross_only.eer), "minDCF_p0.05": float(everything.min_dcf_005),
            "minDCF_p0.01": float(everything.min_dcf_001), "n_trials": int(len(labels))}


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def evaluate(args) -> int:
    import torch
    from capsv.models.checkpoint import load_model, read_checkpoint
    from capsv.evaluation.pipeline import evaluate_list
    torch.set_num_threads(1)
    models = sorted(glob.glob(os.path.join(args.run, "model", "curve*.model")))
    final = sorted(glob.glob(os.path.join(args.run, "model", "model*.model")))
    if not models and not final:
        return _usage_error(f"{args.run}: no model/*.model here; give the run's folder, "
                            "e.g. bench/learning/runs/recipe-CAP-s0-20m")
    out_dir = os.path.join(args.run, "eval")
    os.makedirs(out_dir, exist_ok=True)
    if args.final_only:
        models = []
    if args.curve_only:              # while the run still trains: its epoch checkpoint is not final
        final = []
    kept = {}
    for path in models + final[-1:]:
        kept[path] = read_checkpoint(path)["meta"].get("budget", {})
    missing = sorted(set(args.steps or ()) - {b.get("steps") for b in kept.values()})
    if missing:
        return _usage_error(f"{args.run}: no model kept at steps {missing}; kept: "
                            f"{sorted(b.get('steps') for b in kept.values())}")
    kinds = trial_kinds(args.corpus)
    for path, budget in kept.items():
        if args.steps and budget.get("steps") not in args.steps:
            continue
        for protocol in args.protocols.split(","):
            out = os.path.join(out_dir, f"{budget.get('steps', 0):09d}-{protocol}.json")
            if os.path.exists(out):
                continue
            frames, num_eval = PROTOCOLS[protocol]
            net, _ = load_model(path)
            start = time.time()
            result = evaluate_list(net, os.path.join(args.corpus, "veri_test.txt"),
                                   os.path.join(args.corpus, "wav"), frames, num_eval,
                                   progress=False)
            labels = np.array([t.label for t in result.trials])
            row = breakdown(np.asarray(result.scores), labels,
                            [kinds[(t.path1, t.path2)] for t in result.trials])
            row.update(cpu_minutes=budget.get("seconds", 0.0) / 60, steps=budget.get("steps"),
                       protocol=protocol, model=os.path.basename(path),
                       eval_seconds=time.time() - start)
            with open(out + ".tmp", "w") as f:
                json.dump(row, f)
            os.replace(out + ".tmp", out)
            print(json.dumps(row), flush=True)
    return 0


def batch(args) -> int:
    """Run the commands of a file (one per line), ``--jobs`` at a time; each gets a timeout."""
    with open(args.file) as f:
        commands = [line.split() for line in f if line.strip() and not line.startswith("#")]
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src"))

    def one(cmd):
        started = time.time()
        rc = subprocess.run([sys.executable, __file__, *cmd], env=env, timeout=4 * 3600).returncode
        print(f"[{rc}] {' '.join(cmd)} ({time.time() - started:.0f} s)", flush=True)
        return rc

    with ThreadPoolExecutor(args.jobs) as pool:
        codes = list(pool.map(one, commands))
    return max(codes, default=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=CORPUS)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("variant", choices=sorted(VARIANTS))
    t.add_argument("--pooling", default="CAP", choices=("CAP", "TAP", "SAP"))
    t.add_argument("--minutes", type=float, default=20)
    t.add_argument("--every", type=float, default=5)
    t.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("evaluate")
    e.add_argument("run")
    e.add_argument("--protocols", default="whole,crops")
    e.add_argument("--final_only", action="store_true", help="only the run's last model")
    e.add_argument("--curve_only", action="store_true", help="only the kept curve models")
    e.add_argument("--steps", type=int, nargs="+", help="only the models kept at these step counts")
    b = sub.add_parser("batch")
    b.add_argument("file")
    b.add_argument("--jobs", type=int, default=2)
    r = sub.add_parser("report")
    r.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = p.parse_args(argv)
    if args.command == "report":
        from report import write_report
        return write_report(RUNS, args.out)
    return {"train": train, "evaluate": evaluate, "batch": batch}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
