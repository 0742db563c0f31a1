"""One scale measurement per process (so its peak RSS is its own); bench/scale/run.py calls it.

    python bench/scale/measure.py <name> --root ROOT --scale S [options]

Each prints one or more ``ROW {json}`` lines. Memory comes from /proc/<pid>/status (VmHWM:
peak resident; RssAnon: heap; RssShmem: shared memory, e.g. DataLoader batches) and, for the
DataLoader's forked workers, /proc/<pid>/smaps_rollup (Pss and Private: a forked worker
shares its parent's pages until it writes them, so its RssAnon counts pages it did not copy;
Private is what the worker costs on its own). Only public capsv APIs are used, so this runs
against the code before and after the scale work of issue 14.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "src"))
sys.path.insert(0, HERE)

import layout  # noqa: E402

MB = 1024.0


# --------------------------------------------------------------------------- /proc
def proc_memory(pid: int | str = "self") -> dict:
    """VmHWM, VmRSS, RssAnon, RssFile, RssShmem (+ Pss, Private) of a process, in MB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = round(int(value.split()[0]) / MB, 1)
        with open(f"/proc/{pid}/smaps_rollup") as f:
            private = 0
            for line in f:
                key, _, value = line.partition(":")
                if key == "Pss":
                    out["Pss"] = round(int(value.split()[0]) / MB, 1)
                elif key in ("Private_Clean", "Private_Dirty"):
                    private += int(value.split()[0])
            out["Private"] = round(private / MB, 1)
    except (OSError, ValueError, IndexError):
        pass                                    # the process ended meanwhile
    return out


def descendants(root: int | None = None) -> list[int]:
    """Every live descendant of ``root`` (default: this process)."""
    root = os.getpid() if root is None else root
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


class ChildWatcher:
    """Samples the memory of this process's descendants every ``interval`` s in a thread and
    keeps, per process, the largest value of each field (VmHWM is a peak already; Pss and
    Private are sampled, so their maxima are lower bounds)."""

    def __init__(self, interval: float = 0.5, root: int | None = None):
        self.interval, self.root = interval, root
        self.peaks: dict[int, dict] = {}
        self.own_anon_peak = 0.0      # RssAnon + RssShmem of this process (mapped files excluded)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.sample()
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self):
        own = proc_memory()
        self.own_anon_peak = max(self.own_anon_peak, own["RssAnon"] + own["RssShmem"])
        for pid in descendants(self.root):
            mem = proc_memory(pid)
            peak = self.peaks.setdefault(pid, {})
            for key, value in mem.items():
                peak[key] = max(peak.get(key, 0.0), value)

    def summary(self, exclude: set[int] = frozenset()) -> dict:
        """Largest per-process value of each field over the watched processes, and their count."""
        procs = [p for pid, p in self.peaks.items() if pid not in exclude and p]
        keys = sorted({k for p in procs for k in p})
        return {"processes": len(procs), **{k: max(p.get(k, 0.0) for p in procs) for k in keys}}


def row(bench: str, **values) -> None:
    print("ROW " + json.dumps({"bench": bench, **values, "load1": round(os.getloadavg()[0], 2)}),
          flush=True)


def mem_fields(prefix: str, mem: dict) -> dict:
    return {f"{prefix}_{k}" if k == "processes" else f"{prefix}_{k}_mb": v for k, v in mem.items()}


# --------------------------------------------------------------------------- measurements
def measure_list_load(args, where: dict) -> None:
    """TrainList.read of the full train list (every file checked), wav and m4a trees; the
    E trial list's parse."""
    from capsv.data.dataset import TrainList
    from capsv.data.lists import read_trials

    before = proc_memory()
    if args.variant == "trials_E":
        start = time.perf_counter()
        trials = read_trials(where["trial_E"])
        seconds = time.perf_counter() - start
        row("list_load", variant="trial list E (read_trials)", lines=len(trials),
            seconds=round(seconds, 2), **mem_fields("after", proc_memory()),
            growth_mb=round(proc_memory()["RssAnon"] - before["RssAnon"], 1))
        return
    tree = where["vox2_m4a"] if args.variant == "m4a" else where["vox2_wav"]
    start = time.perf_counter()
    train_list = TrainList.read(where["vox2_list"], tree)
    seconds = time.perf_counter() - start
    after = proc_memory()
    row("list_load", variant=f"train list, {args.variant} tree (TrainList.read, files checked)",
        lines=len(train_list.paths), speakers=train_list.n_speakers,
        substituted_m4a=train_list.substituted_m4a, seconds=round(seconds, 2),
        **mem_fields("after", after), growth_mb=round(after["RssAnon"] - before["RssAnon"], 1))


def measure_sampler(args, where: dict) -> None:
    """SpeakerBatchSampler set-up and per-epoch plan at the paper's batch (200 x 3, 100 a speaker)."""
    from capsv.data.dataset import TrainList
    from capsv.data.sampler import SpeakerBatchSampler

    train_list = TrainList.read(where["vox2_list"], where["vox2_wav"], check_files=False)
    before = proc_memory()
    batch = paper_batch(args.scale)
    start = time.perf_counter()
    sampler = SpeakerBatchSampler(train_list.labels, batch, 3, 100, seed=0)
    setup = time.perf_counter() - start
    plans = []
    for epoch in (1, 2, 3):
        start = time.perf_counter()
        plan = sampler.plan(epoch)
        plans.append(time.perf_counter() - start)
    after = proc_memory()
    row("sampler", lines=len(train_list.labels), batch_size=batch, nSpeakers=3,
        max_seg_per_spk=100, batches=len(plan.batches), setup_s=round(setup, 3),
        plan_s=[round(p, 3) for p in plans], plan_median_s=round(sorted(plans)[1], 3),
        growth_mb=round(after["RssAnon"] - before["RssAnon"], 1), **mem_fields("after", after))


def paper_batch(scale: float) -> int:
    """200 speakers a batch (the paper), scaled so a small layout still forms ~29 batches."""
    return max(2, int(round(200 * min(1.0, scale))))


def measure_crops(args, where: dict) -> None:
    """Training crops (2 s) per second at full list size: one process reading in a loop (what
    one DataLoader worker can produce), then make_train_loader with ``--workers`` workers
    (rate and per-worker memory). Both are capped at ``--seconds``."""
    import torch

    from capsv.data.dataset import TrainCrops, TrainList, make_train_loader
    from capsv.data.sampler import SpeakerBatchSampler

    torch.set_num_threads(1)
    tree = where["vox2_m4a"] if args.variant == "m4a" else where["vox2_wav"]
    train_list = TrainList.read(where["vox2_list"], tree)
    dataset = TrainCrops(train_list.paths, train_list.labels, max_frames=200, seed=0)
    dataset.set_epoch(1)
    # Small batches (20 speakers x 3) so a slow reader still delivers several within the cap.
    sampler = SpeakerBatchSampler(train_list.labels, 20, 3, 100, seed=0)
    sampler.set_epoch(1)
    batches = sampler.local_batches()
    before = proc_memory()
    crops, start = 0, time.perf_counter()
    first = None
    for batch in batches:
        items = dataset.__getitems__(batch) if hasattr(dataset, "__getitems__") \
            else [dataset[i] for i in batch]
        crops += len(items)
        first = first or time.perf_counter() - start
        if time.perf_counter() - start > args.seconds:
            break
    seconds = time.perf_counter() - start
    after = proc_memory()
    row("crops_in_process", variant=args.variant, lines=len(train_list.paths), crops=crops,
        seconds=round(seconds, 2), crops_per_s=round(crops / seconds, 1),
        first_batch_s=round(first, 2), growth_mb=round(after["RssAnon"] - before["RssAnon"], 1),
        **mem_fields("main", after))

    loader = make_train_loader(dataset, sampler, args.workers)
    main_before = proc_memory()
    crops = 0
    with ChildWatcher() as watch:
        start = time.perf_counter()
        iterator = iter(loader)
        for waves, labels, _ in iterator:
            crops += waves.shape[0]
            if time.perf_counter() - start > args.seconds:
                break
        seconds = time.perf_counter() - start
        watch.sample()
    del iterator
    workers = watch.summary()
    rate = crops / seconds
    row("crops_loader", variant=args.variant, lines=len(train_list.paths), workers=args.workers,
        crops=crops, seconds=round(seconds, 2), crops_per_s=round(rate, 1),
        crops_per_s_per_worker=round(rate / max(1, args.workers), 1),
        **mem_fields("worker_max", workers), **mem_fields("main", proc_memory()),
        main_rss_before_loader_mb=main_before.get("VmRSS"))


def measure_eval(args, where: dict) -> None:
    """evaluate_list over ``--eval_files`` files of the VoxCeleb1 layout with a randomly
    initialised ResNetSE34L: time and peak memory, per 1,000 files."""
    import torch

    from capsv.evaluation.pipeline import evaluate_list
    from capsv.models import SpeakerNet

    torch.manual_seed(0)
    net = SpeakerNet("ResNetSE34L", args.encoder, 512)
    before = proc_memory()
    with ChildWatcher() as watch:
        start = time.perf_counter()
        result = evaluate_list(net, where["eval_list"], where["vox1_wav"],
                               eval_frames=args.eval_frames, num_eval=10, workers=args.workers,
                               progress=False)
        seconds = time.perf_counter() - start
    after = proc_memory()
    files = len({t.path1 for t in result.trials} | {t.path2 for t in result.trials})
    per_k = 1000.0 / files
    row("eval", encoder=args.encoder,
        crops="whole utterance" if args.eval_frames == 0 else f"10 x {args.eval_frames} frames",
        files=files, trials=len(result.trials), workers=args.workers, seconds=round(seconds, 1),
        s_per_1000_files=round(seconds * per_k, 1), rss_before_mb=before["VmRSS"],
        peak_rss_mb=after["VmHWM"], peak_anon_mb=round(watch.own_anon_peak, 1),
        growth_per_1000_files_mb=round((after["VmHWM"] - before["VmRSS"]) * per_k, 1),
        **mem_fields("worker_max", watch.summary()))


def measure_scoring(args, where: dict) -> None:
    """Scoring an O- or E-size trial list from synthetic features of the real shapes.

    TAP: capsv.evaluation.scoring.score_pairs over the whole list (10 unit embeddings a file).
    CAP: capsv.evaluation.cap_scoring.GroupedCapScorer (what score_pairs uses for fixed crops) on the
    trials of a random sample of support files (~``--sample_trials`` trials), extrapolated
    linearly to the list. Every file's features are one shared tensor seen through a
    zero-stride view (E's 145 k files would need 131 GB of real CAP features): the arithmetic
    is that of distinct files, but the reads come from cache, so this is a lower bound on
    the time of scoring features that stream from RAM or disk."""
    import torch

    from capsv.evaluation.cap_scoring import GroupedCapScorer
    from capsv.data.lists import read_trials, trial_files
    from capsv.evaluation.extract import FileFeatures
    from capsv.evaluation.scoring import score_pairs
    from capsv.evaluation.metrics import compute_metrics
    from capsv.models.pooling import CAP

    torch.manual_seed(0)
    trials = read_trials(where[f"trial_{args.variant}"])
    files = trial_files(trials)
    index = {f: i for i, f in enumerate(files)}
    pairs = np.array([(index[t.path1], index[t.path2]) for t in trials], dtype=np.int64)
    labels = np.array([t.label for t in trials])
    del trials
    n = len(files)
    rng = np.random.default_rng(0)
    before = proc_memory()

    if args.encoder == "TAP":
        emb = torch.nn.functional.normalize(torch.randn(10, 512), dim=-1)
        feats = FileFeatures()
        feats.emb = {i: emb for i in range(n)}

        class _Net:
            pairwise = False

        start = time.perf_counter()
        scores = score_pairs(_Net(), feats, pairs, progress=False)
        seconds = time.perf_counter() - start
        scored = len(pairs)
    else:
        cap = CAP(128, 512).eval()
        frames = torch.randn(1, 10, 128, 88).relu()
        proj = torch.nn.functional.normalize(torch.randn(1, 10, 88, 128), dim=-1)
        frames_store, proj_store = frames.expand(n, -1, -1, -1), proj.expand(n, -1, -1, -1)
        share = min(1.0, args.sample_trials / len(pairs))
        support = rng.random(n) < share if share < 1.0 else np.ones(n, dtype=bool)
        sample = pairs[support[pairs[:, 0]]]
        with torch.inference_mode():
            start = time.perf_counter()
            scorer = GroupedCapScorer(cap, frames_store, proj_store)
            setup = time.perf_counter() - start
            part = scorer.score(sample)
            seconds = time.perf_counter() - start
        scored = len(sample)
        scores = rng.standard_normal(len(pairs))
        scores[:len(part)] = part
    start = time.perf_counter()
    compute_metrics(scores, labels)
    metrics_s = time.perf_counter() - start
    after = proc_memory()
    extrapolated = seconds / scored * len(pairs)
    row("scoring", list=args.variant, encoder=args.encoder, trials=len(pairs), files=n,
        trials_scored=scored, seconds=round(seconds, 2),
        **({"setup_s": round(setup, 2)} if args.encoder == "CAP" else {}),
        trials_per_s=round(scored / seconds, 1), full_list_s=round(extrapolated, 1),
        measured="whole list" if scored == len(pairs) else "sample, extrapolated",
        metrics_s=round(metrics_s, 2), peak_rss_mb=after["VmHWM"],
        growth_mb=round(after["VmHWM"] - before["VmRSS"], 1))


def measure_train_epoch(args, where: dict) -> None:
    """One epoch of ``capsv train`` (the real CLI, default --nDataLoaderThread) on the
    59,940-line list or on the 1,092,009-line one, same speakers and flags:
    --max_seg_per_spk 3 --batch_size 200 --nSpeakers 3 --max_frames 20 (29 batches at full
    size), ResNetSE34L + TAP, --nOut 128, no evaluation. The epoch's seconds come from the
    run's metrics.jsonl; a run past ``--train_timeout`` is stopped and reported as such."""
    import shutil

    list_path = where["vox2_small_list"] if args.variant == "small" else where["vox2_list"]
    save = os.path.join(where["out"], "runs", f"epoch-{args.variant}")
    shutil.rmtree(save, ignore_errors=True)
    command = [sys.executable, "-m", "capsv.cli", "train", "--train_list", list_path,
               "--train_path", where["vox2_wav"], "--save_path", save, "--max_epoch", "1",
               "--max_seg_per_spk", "3", "--batch_size", str(paper_batch(args.scale)),
               "--nSpeakers", "3", "--max_frames", "20", "--model", "ResNetSE34L",
               "--encoder_type", "TAP", "--nOut", "128", "--device", "cpu", "--no_progress"]
    with ChildWatcher() as watch:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = proc.communicate(timeout=args.train_timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            for pid in descendants(proc.pid):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            proc.kill()
            output, _ = proc.communicate()
            timed_out = True
        wall = time.perf_counter() - start
    train_pid = proc.pid
    metrics_path = os.path.join(save, "result", "metrics.jsonl")
    epoch = {}
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        epoch = lines[-1] if lines else {}
    trainer = watch.peaks.get(train_pid, {})
    with open(list_path) as f:
        n_lines = sum(1 for _ in f)
    workers = watch.summary(exclude={train_pid})
    row("train_epoch", variant=args.variant, list=os.path.basename(list_path),
        lines=n_lines, steps=epoch.get("steps"),
        epoch_s=round(epoch["seconds"], 1) if "seconds" in epoch else None,
        wall_s=round(wall, 1), timed_out=timed_out, timeout_s=args.train_timeout,
        exit_status=proc.returncode, trainer_peak_rss_mb=trainer.get("VmHWM"),
        **mem_fields("worker_max", workers),
        tail=output.strip().splitlines()[-3:] if output else [])


MEASUREMENTS = {"list_load": measure_list_load, "sampler": measure_sampler,
                "crops": measure_crops, "eval": measure_eval, "scoring": measure_scoring,
                "train_epoch": measure_train_epoch}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(MEASUREMENTS))
    parser.add_argument("--root", default=layout.DEFAULT_ROOT)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--variant", default="wav")
    parser.add_argument("--encoder", default="TAP")
    parser.add_argument("--eval_frames", type=int, default=350)
    parser.add_argument("--eval_list", help="trial list of the eval measurement")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0, help="cap of the crop loops")
    parser.add_argument("--sample_trials", type=int, default=20_000)
    parser.add_argument("--train_timeout", type=float, default=1800.0)
    args = parser.parse_args()
    if os.environ.get("CAPSV_BENCH_THREADS"):
        # One intra-op thread (run.py's default): on a busy 2-core machine two threads wait
        # on each other and timings swing by 10x (bench/common.py does the same).
        import torch
        torch.set_num_threads(int(os.environ["CAPSV_BENCH_THREADS"]))
    where = layout.paths(args.root, args.scale)
    where["eval_list"] = args.eval_list
    MEASUREMENTS[args.name](args, where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
