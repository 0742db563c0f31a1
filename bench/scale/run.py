"""The VoxCeleb scale harness (``make bench-scale``; not part of ``make test``).

Builds (or reuses) the VoxCeleb-size layouts of bench/scale/layout.py, then runs every
measurement of bench/scale/measure.py in its own process and prints a markdown table ready
for bench/RESULTS.md; the table and the raw rows are also written to
<root>/<layout>/results.md and results.json.

    python bench/scale/run.py [--root /tmp/capsv-scale] [--quick] [--only crops eval ...]

--quick: a 2 % layout (120 speakers, 21,840 train lines) and short caps, to check the
harness in a few minutes. Full size needs ~1.5 GB of disk (hard links; 2.5 M directory
entries) and, on 2 cores, 30-60 minutes depending on the code under test (the training-epoch
comparison is capped by --train_timeout).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "src"))
sys.path.insert(0, HERE)

import layout  # noqa: E402

QUICK_SCALE = 0.02
FULL = {"E": 145_160, "vox2": layout.VOX2_CLIPS}


def plan(args) -> list[tuple[str, list[str], float]]:
    """(name, measure.py arguments, timeout s) of every measurement, in order."""
    crops = ["--seconds", str(args.seconds), "--workers", str(args.workers)]
    ev = ["--workers", str(args.eval_workers)]
    steps = [("list_load", ["--variant", "wav"], 900), ("list_load", ["--variant", "m4a"], 900),
             ("list_load", ["--variant", "trials_E"], 600), ("sampler", [], 900),
             ("crops", ["--variant", "wav", *crops], 900 + 3 * args.seconds),
             ("crops", ["--variant", "m4a", *crops], 900 + 3 * args.seconds)]
    for encoder in ("TAP", "CAP"):
        for frames in ("350", "0"):
            for eval_list in args.eval_lists:      # two sizes: the memory's slope per file
                steps.append(("eval", ["--encoder", encoder, "--eval_frames", frames,
                                       "--eval_list", eval_list, *ev], 120 + 6 * args.eval_files))
    for trial_list in ("O", "E"):
        for encoder in ("TAP", "CAP"):
            steps.append(("scoring", ["--variant", trial_list, "--encoder", encoder,
                                      "--sample_trials", str(args.sample_trials)], 1200))
    timeout = ["--train_timeout", str(args.train_timeout)]
    steps += [("train_epoch", ["--variant", "small", *timeout], args.train_timeout + 120),
              ("train_epoch", ["--variant", "full", *timeout], args.train_timeout + 120)]
    return [s for s in steps if not args.only or s[0] in args.only]


def make_eval_list(where: dict, n_files: int, seed: int = 0) -> str:
    """A trial list over ``n_files`` files of the VoxCeleb1 layout (2 trials a file)."""
    with open(where["trial_E"]) as f:
        names = sorted({p for line in f for p in line.split()[1:]})
    rng = np.random.default_rng(seed)
    # Random blocks of 10 neighbouring files (mostly one speaker's), so targets exist.
    blocks = rng.choice(len(names) // 10, size=min(-(-n_files // 10), len(names) // 10), replace=False)
    chosen = np.sort((blocks[:, None] * 10 + np.arange(10)).reshape(-1)[:n_files])
    speaker_of = {s: i for i, s in enumerate(sorted({n.split("/")[0] for n in names}))}
    speakers = np.array([speaker_of[n.split("/")[0]] for n in names])
    trials = layout.make_trials(chosen, speakers, 2 * len(chosen), rng)
    path = os.path.join(where["out"], f"eval_{len(chosen)}.txt")
    layout.write_trials(path, trials, names)
    return path


def run_measurement(name: str, extra: list[str], timeout: float, args) -> list[dict]:
    command = [sys.executable, os.path.join(HERE, "measure.py"), name, "--root", args.root,
               "--scale", str(args.scale), *extra]
    print(f"== {name} {' '.join(extra)}", flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"   timed out after {timeout:.0f} s", flush=True)
        return [{"bench": name, "args": extra, "error": f"timed out after {timeout:.0f} s"}]
    rows = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("ROW ")]
    for r in rows:
        print("   " + json.dumps(r), flush=True)
    if done.returncode != 0 or not rows:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"   failed (exit {done.returncode}): {tail}", flush=True)
        rows.append({"bench": name, "args": extra, "error": f"exit {done.returncode}: {tail}"})
    return rows


# --------------------------------------------------------------------------- the table
def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(rows: list[dict], info: dict, scale: float) -> list[tuple[str, str, str]]:
    """(figure, measured, full size / extrapolation) lines for every row."""
    out = []
    v2 = info.get("vox2", {})
    out.append(("layout build (hard links; resumable)",
                f"{v2.get('lines', 0):,} + {v2.get('lines', 0):,} (m4a) + "
                f"{info.get('vox1', {}).get('files', 0):,} links, "
                f"{info.get('build_seconds')} s" + (" (built earlier)" if info.get("reused") else ""),
                f"wav {v2.get('wav_link_seconds')} s, m4a {v2.get('m4a_link_seconds')} s, "
                f"vox1 {info.get('vox1', {}).get('link_seconds')} s"))
    epochs, evals = {}, {}
    for r in rows:
        b = r["bench"]
        if "error" in r:
            out.append((f"{b} {' '.join(r.get('args', []))}", "**failed**", r["error"]))
        elif b == "list_load":
            out.append((f"load: {r['variant']}", f"{r['seconds']:.2f} s, +{r['growth_mb']:.0f} MB "
                        f"(peak RSS {r['after_VmHWM_mb']:.0f} MB)", f"{r['lines']:,} lines"))
        elif b == "sampler":
            out.append((f"sampler: set-up / plan of one epoch ({r['batch_size']} x 3, <= 100 a speaker)",
                        f"{r['setup_s']:.2f} s / {r['plan_median_s']:.2f} s, +{r['growth_mb']:.0f} MB",
                        f"{r['lines']:,} lines, {r['batches']:,} batches"))
        elif b == "crops_in_process":
            target = " (target >= 1,000)" if r["variant"] == "wav" else ""
            out.append((f"2 s crops/s in one process, {r['variant']}{target}",
                        f"**{r['crops_per_s']:,.0f}** ({r['crops']:,} crops in {r['seconds']:.0f} s)",
                        f"{r['lines']:,}-line list; the first batch of 60 took {r['first_batch_s']:.2f} s"))
        elif b == "crops_loader":
            out.append((f"make_train_loader, {r['workers']} workers, {r['variant']}: crops/s per worker; "
                        "worker peak RSS / private",
                        f"{r['crops_per_s_per_worker']:,.0f}; {r.get('worker_max_VmHWM_mb', 0):.0f} MB / "
                        f"{r.get('worker_max_Private_mb', 0):.0f} MB",
                        f"total {r['crops_per_s']:,.0f} crops/s; main process {r['main_VmHWM_mb']:.0f} MB"))
        elif b == "eval":
            key = (r["encoder"], r["crops"])
            smaller = evals.get(key)
            evals[key] = r
            if smaller is None:
                continue
            # Time and memory per file from the difference of two sizes: the fixed costs
            # (model, worker start-up, buffers) cancel.
            extra_files = r["files"] - smaller["files"]
            # Anonymous memory (RssAnon + RssShmem): the pages of a memory-mapped feature store
            # are page cache, reclaimable, and counted in VmHWM but not here.
            anon = "peak_anon_mb" if "peak_anon_mb" in r else "peak_rss_mb"
            slope = (r[anon] - smaller[anon]) / extra_files
            per_k = (r["seconds"] - smaller["seconds"]) / extra_files * 1000
            hours = per_k * FULL["E"] / 1000 / 3600
            rss = r[anon] + slope * (FULL["E"] - r["files"])
            what = "anonymous memory" if anon == "peak_anon_mb" else "peak RSS"
            out.append((f"eval {r['encoder']}, {r['crops']}: time / {what} growth per 1,000 files",
                        f"{per_k:,.0f} s / {slope * 1000:+,.0f} MB (peak "
                        f"{smaller[anon]:,.0f} MB at {smaller['files']:,} files, "
                        f"{r[anon]:,.0f} MB at {r['files']:,}; VmHWM with mapped store pages "
                        f"{r['peak_rss_mb']:,.0f} MB)",
                        f"E (145,160 files) on these cores: {hours:,.1f} h; {what} if linear "
                        f"{rss / 1024:,.1f} GB; workers {r.get('worker_max_VmHWM_mb', 0):,.0f} MB"))
        elif b == "scoring":
            out.append((f"score {r['list']} list ({r['trials']:,} trials, {r['files']:,} files), {r['encoder']}",
                        f"{r['full_list_s']:,.1f} s ({r['trials_per_s']:,.0f} trials/s; {r['measured']})",
                        f"peak RSS {r['peak_rss_mb']:,.0f} MB (+{r['growth_mb']:,.0f}); EER/minDCF "
                        f"{r['metrics_s']:.2f} s"))
        elif b == "train_epoch":
            epochs[r["variant"]] = r
            if r["timed_out"]:
                time_text = f"> {r['timeout_s']:.0f} s (stopped)"
            else:
                time_text = f"epoch {_fmt(r['epoch_s'])} s, wall {r['wall_s']:.0f} s"
            out.append((f"capsv train, one epoch, {r['lines']:,}-line list",
                        f"{time_text}, {_fmt(r['steps'])} steps",
                        f"trainer peak RSS {_fmt(r['trainer_peak_rss_mb'], 0)} MB, workers "
                        f"{_fmt(r.get('worker_max_VmHWM_mb'), 0)} MB (x{r.get('worker_max_processes', 0)})"))
    if "small" in epochs and "full" in epochs:
        small, full = epochs["small"], epochs["full"]
        if small.get("epoch_s") and full.get("epoch_s"):
            ratio = full["epoch_s"] / small["epoch_s"]
            verdict = "met" if ratio <= 1.5 else "**missed**"
            out.append(("epoch time ratio, full list / 59,940-line list (target <= 1.5)",
                        f"**{ratio:.2f}x** ({verdict})",
                        f"wall ratio {full['wall_s'] / small['wall_s']:.2f}x (incl. list loading)"))
        elif small.get("epoch_s") and full.get("timed_out"):
            out.append(("epoch time ratio, full list / 59,940-line list (target <= 1.5)",
                        f"**> {full['timeout_s'] / small['epoch_s']:.1f}x** (missed)",
                        "the full-list epoch did not finish within the timeout"))
    return out


def machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "commit": commit}


def markdown(lines, info: dict, meta: dict) -> str:
    text = [f"Measured {meta['started']} - {meta['finished']} UTC, commit `{meta['machine']['commit']}`, "
            f"scale {meta['scale']:g}; {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
            f"Python {meta['machine']['python']}, {meta['threads']} intra-op thread(s) "
            f"(CAPSV_BENCH_THREADS); load average {meta['load_start']:.1f} at the start, "
            f"{meta['load_end']:.1f} at the end.", "", f"```\n{meta['command']}\n```", "",
            "| figure | measured | at full size / notes |", "|---|---|---|"]
    text += [f"| {a} | {b} | {c} |" for a, b, c in lines]
    return "\n".join(text) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=layout.DEFAULT_ROOT, help="layouts folder (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=None, help="size factor (default 1; --quick: 0.02)")
    parser.add_argument("--quick", action="store_true", help="small layout, short caps: a smoke run")
    parser.add_argument("--seconds", type=float, default=None, help="cap of each crop-rate loop (30; quick 5)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the crop measure")
    parser.add_argument("--eval_files", type=int, default=None, help="files of each eval measure (1000; quick 40)")
    parser.add_argument("--eval_workers", type=int, default=2, help="loader workers of evaluation")
    parser.add_argument("--sample_trials", type=int, default=None,
                        help="CAP scoring sample (20000; quick 2000)")
    parser.add_argument("--train_timeout", type=float, default=None,
                        help="cap of each training epoch, s (1800; quick 600)")
    parser.add_argument("--only", nargs="+", choices=["list_load", "sampler", "crops", "eval",
                                                      "scoring", "train_epoch"])
    args = parser.parse_args()
    quick = args.quick
    # Children use one intra-op thread unless told otherwise (measure.py); capsv train keeps
    # its own default.
    os.environ.setdefault("CAPSV_BENCH_THREADS", "1")
    args.scale = args.scale if args.scale is not None else (QUICK_SCALE if quick else 1.0)
    args.seconds = args.seconds or (5.0 if quick else 30.0)
    args.eval_files = args.eval_files or (40 if quick else 1000)
    args.sample_trials = args.sample_trials or (2000 if quick else 20_000)
    args.train_timeout = args.train_timeout or (600.0 if quick else 1800.0)
    meta = {"started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "scale": args.scale,
            "load_start": os.getloadavg()[0], "machine": machine(),
            "command": "python bench/scale/run.py " + " ".join(sys.argv[1:]),
            "threads": os.environ["CAPSV_BENCH_THREADS"]}
    print("machine:", json.dumps(meta["machine"]), flush=True)
    info = layout.build(args.root, args.scale, progress=False)
    where = layout.paths(args.root, args.scale)
    print(f"layout {where['out']}: {'reused' if info['reused'] else 'built'} "
          f"({info['build_seconds']} s to build)", flush=True)
    args.eval_lists = [make_eval_list(where, max(10, args.eval_files // 4)),
                       make_eval_list(where, args.eval_files)]
    rows = []
    for name, extra, timeout in plan(args):
        rows += run_measurement(name, extra, timeout, args)
    meta.update(finished=time.strftime("%Y-%m-%d %H:%M", time.gmtime()), load_end=os.getloadavg()[0])
    text = markdown(table(rows, info, args.scale), info, meta)
    print("\n" + text)
    from capsv.utils import atomic_write_text
    atomic_write_text(os.path.join(where["out"], "results.md"), text)
    atomic_write_text(os.path.join(where["out"], "results.json"),
                      json.dumps({"meta": meta, "layout": info, "rows": rows}, indent=1) + "\n")
    print(f"written: {os.path.join(where['out'], 'results.md')} and results.json")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
