"""bench/learning/RESULTS.md and learning_curve.png from the runs' evaluations.

RESULTS.md = notes.md (the hand-written analysis) + the tables generated here, so that the
numbers in it are always the measured ones.
"""
from __future__ import annotations

import glob
import json
import os
import re
from collections import defaultdict

NAME = re.compile(r"^(?P<variant>.+)-(?P<pooling>CAP|TAP|SAP)-s(?P<seed>\d+)-(?P<minutes>[\d.]+)m$")


def load_runs(runs_dir: str) -> dict:
    """{run name: {"variant", "pooling", "seed", "minutes", "points": {(steps, protocol): row}}}"""
    runs = {}
    for run in sorted(glob.glob(os.path.join(runs_dir, "*"))):
        m = NAME.match(os.path.basename(run))
        if not m:
            continue
        points = {}
        for path in glob.glob(os.path.join(run, "eval", "*.json")):
            with open(path) as f:
                row = json.load(f)
            points[(row["steps"], row["protocol"])] = row
        runs[os.path.basename(run)] = {**m.groupdict(), "points": points}
    return runs


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return (f"{row['EER_all']:.1f} / {row['EER_hard']:.1f} / {row['EER_cross']:.1f} / "
            f"{row['minDCF_p0.05']:.3f}")


def table(runs: dict, names: list[str]) -> list[str]:
    lines = ["| run | CPU-min | steps | whole utterances | 10 x 350-frame crops |",
             "|---|---:|---:|---|---|"]
    for name in names:
        points = runs[name]["points"]
        for steps in sorted({s for s, _ in points}):
            whole, crops = points.get((steps, "whole")), points.get((steps, "crops"))
            minutes = (whole or crops)["cpu_minutes"]
            lines.append(f"| {name} | {minutes:.1f} | {steps} | {_cell(whole)} | {_cell(crops)} |")
    return lines


SEARCH_NOTES = {"quick": "(base)", "quick-crop50": "0.5 s crops", "quick-crop200": "2 s crops",
                "quick-b64": "64 speakers per batch", "quick-n3": "3 utterances per speaker",
                "quick-lr5e-3": "LR 0.005 (the recipe)", "quick-noclf": "no global classifier",
                "quick-clf0.3": "global classifier weight 0.3", "quick-plateau": "plateau schedule",
                "quick-aam": "TAP: AAM-softmax (m 0.2, s 30), 96 x 1"}


def _metrics(row: dict | None) -> str:
    if row is None:
        return "- | - | - | -"
    return (f"{row['EER_all']:.2f} | {row['EER_hard']:.2f} | {row['EER_cross']:.2f} | "
            f"{row['minDCF_p0.05']:.3f}")


def variant_table(runs: dict, variant: str) -> list[str]:
    """Every kept point of every run of ``variant`` (the shipped recipe, or the paper's), both
    protocols where measured."""
    lines = ["| pooling | seed | run of | CPU-min | steps | whole: EER all | hard | cross | minDCF "
             "| crops: EER all | hard | cross | minDCF |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    names = [n for n, r in runs.items() if r["variant"] == variant]
    for name in sorted(names, key=lambda n: (float(runs[n]["minutes"]), n)):
        run = runs[name]
        for steps in sorted({s for s, _ in run["points"]}):
            whole, crops = run["points"].get((steps, "whole")), run["points"].get((steps, "crops"))
            minutes = (whole or crops)["cpu_minutes"]
            lines.append(f"| {run['pooling']} | {run['seed']} | {float(run['minutes']):g} min "
                         f"| {minutes:.1f} | {steps} | "
                         f"{_metrics(whole)} | {_metrics(crops)} |")
    return lines


FULL_BUDGET_VARIANTS = ("recipe", "paper")      # their own tables; the search ran 4 minutes


def search_table(runs: dict) -> list[str]:
    """The last whole-utterance point of each search run (unevaluated runs marked)."""
    lines = []
    for name in sorted(n for n, r in runs.items() if r["variant"] not in FULL_BUDGET_VARIANTS):
        run = runs[name]
        rows = [r for (s, p), r in run["points"].items() if p == "whole"]
        last = max(rows, key=lambda r: r["steps"]) if rows else None
        label = f"{run['variant']} ({run['pooling']})"
        lines.append(f"| {label} | {SEARCH_NOTES.get(run['variant'], '')} | {_metrics(last)} |")
    return lines


def _line_style(run: dict) -> dict:
    """The paper's recipe dotted with squares; the shipped recipe opaque (seed 1 dashed, the
    60-minute runs dash-dotted, seed 1 of those with triangles); search runs faint."""
    if run["variant"] == "paper":
        return dict(linestyle=":", marker="s", alpha=0.7)
    long_run = float(run["minutes"]) > 20
    style = "-." if long_run else "-" if run["seed"] == "0" else "--"
    marker = "^" if long_run and run["seed"] != "0" else "o"
    return dict(linestyle=style, marker=marker, alpha=0.9 if run["variant"] == "recipe" else 0.35)


def plot(runs: dict, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colours = {"CAP": "tab:red", "TAP": "tab:blue", "SAP": "tab:green"}
    for ax, key, title in ((axes[0], "EER_all", "all trials"),
                           (axes[1], "EER_hard", "targets vs hard non-targets")):
        for name, run in sorted(runs.items()):
            rows = sorted((r for (s, p), r in run["points"].items() if p == "whole"),
                          key=lambda r: r["cpu_minutes"])
            if not rows:
                continue
            ax.plot([r["cpu_minutes"] for r in rows], [r[key] for r in rows],
                    color=colours[run["pooling"]], label=name, **_line_style(run))
        ax.set_title(f"EER, {title} (whole utterances)")
        ax.set_xlabel("training CPU-minutes (one core)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("EER %")
    axes[1].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def write_report(runs_dir: str, out: str) -> int:
    runs = load_runs(runs_dir)
    here = os.path.dirname(out)
    notes_path = os.path.join(here, "notes.md")
    notes = open(notes_path).read() if os.path.exists(notes_path) else "# Learning per CPU-minute\n"
    by_variant = defaultdict(list)
    for name, run in runs.items():
        by_variant[run["variant"]].append(name)
    notes = notes.replace("RECIPE_TABLE", "\n".join(variant_table(runs, "recipe")))
    notes = notes.replace("PAPER_TABLE", "\n".join(variant_table(runs, "paper")))
    notes = notes.replace("SEARCH_TABLE", "\n".join(search_table(runs)))
    lines = [notes.rstrip(), "", "## All measured points (generated by `run.py report`)", "",
             "Cells: EER all / EER hard / EER cross-session (%) / minDCF(p=0.05).", ""]
    for variant in sorted(by_variant):
        names = [n for n in sorted(by_variant[variant]) if runs[n]["points"]]
        if names:
            lines += [f"### {variant}", ""] + table(runs, names) + [""]
    with open(out + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(out + ".tmp", out)
    if any(r["points"] for r in runs.values()):
        plot({n: r for n, r in runs.items() if r["points"]}, os.path.join(here, "learning_curve.png"))
    print(f"wrote {out} ({len(runs)} runs)")
    return 0
