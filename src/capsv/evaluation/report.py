"""Evaluation reports: DET curves, score histograms, metrics JSON and score files.

Reusable pieces:

- :func:`plot_det` draws one or several systems on one DET plot (``{name: (scores, labels)}``),
  with each system's EER point and minDCF (p_target 0.05, the paper's) operating point marked;
- :func:`plot_score_histogram` draws one system's target / non-target score distributions;
- :func:`write_report` writes everything for one system into a folder;
- :func:`write_comparison` writes a multi-system DET plot plus a metrics table.

The DET axes use the normal-deviate (probit) scale, on which Gaussian score distributions give
straight lines. Plots are rendered with matplotlib's Agg canvas (no display, no pyplot state).
"""
from __future__ import annotations

import json
import os
from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np

from .metrics import _check, compute_metrics, roc_points
from ..utils import atomic_path, atomic_write_text

TICKS = np.array([0.01, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40, 60, 80, 95]) / 100.0
COLORS = ["#1f5fa8", "#d1495b", "#2a9d5c", "#e39b2d", "#6a4c93", "#3d3d3d"]
DCF_P = 0.05

_probit = np.vectorize(NormalDist().inv_cdf, otypes=[float])


def probit(p, floor: float = 1e-6) -> np.ndarray:
    """Normal deviate of probabilities, clipped into (floor, 1 - floor)."""
    return _probit(np.clip(np.asarray(p, dtype=np.float64), floor, 1 - floor))


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(false-acceptance rate, false-rejection rate) at every score threshold, FAR rising."""
    scores, labels = _check(scores, labels)
    order = np.argsort(-scores, kind="stable")
    ordered_scores, ordered = scores[order], labels[order]
    last_of_run = np.r_[np.nonzero(np.diff(ordered_scores))[0], len(scores) - 1]
    accepted_targets = np.cumsum(ordered)[last_of_run]
    accepted_nontargets = (last_of_run + 1) - accepted_targets
    far = np.r_[0.0, accepted_nontargets / (len(labels) - labels.sum())]
    frr = np.r_[1.0, 1.0 - accepted_targets / labels.sum()]
    return far, frr


def eer_point(scores, labels) -> tuple[float, float]:
    """(FAR, FRR) at the EER operating point of :func:`capsv.evaluation.metrics.compute_eer`."""
    fpr, tpr, _ = roc_points(scores, labels)
    index = int(np.nanargmin(np.abs((1 - tpr) - fpr)))
    return float(fpr[index]), float(1 - tpr[index])


def min_dcf_point(scores, labels, p_target: float = DCF_P) -> tuple[float, float, float]:
    """(FAR, FRR, threshold) where :func:`capsv.evaluation.metrics.compute_min_dcf` finds its minimum."""
    scores, labels = _check(scores, labels)
    order = np.argsort(scores, kind="stable")
    ordered = labels[order]
    frr = np.cumsum(ordered) / ordered.sum()
    far = 1.0 - np.cumsum(1 - ordered) / (len(labels) - ordered.sum())
    index = int(np.argmin(frr * p_target + far * (1 - p_target)))
    return float(far[index]), float(frr[index]), float(scores[order][index])


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png")


def _axis_range(curves: list[tuple[np.ndarray, np.ndarray]], marks: list[float]) -> tuple[float, float]:
    """From the tick below the smallest non-zero rate (at most 1%) to 60%, or past the
    highest marked operating point."""
    positive = np.concatenate([np.r_[far[far > 0], frr[frr > 0]] for far, frr in curves])
    smallest = positive.min() if positive.size else 1e-3
    low = TICKS[max(0, np.searchsorted(TICKS, smallest, side="right") - 1)]
    high = TICKS[min(len(TICKS) - 1, np.searchsorted(TICKS, max(marks) * 1.15))]
    return float(min(low, 0.01)), float(max(high, 0.6))


def _spaced(ticks: np.ndarray, gap: float = 0.2) -> np.ndarray:
    """Drop ticks closer than ``gap`` normal deviates to the previous one (labels would collide)."""
    kept = [ticks[0]]
    for tick in ticks[1:]:
        if probit(tick) - probit(kept[-1]) >= gap:
            kept.append(tick)
    return np.array(kept)


def plot_det(systems: Mapping[str, tuple[Sequence[float], Sequence[int]]], path: str,
             title: str = "DET curve") -> str:
    """Draw every system's DET curve on one plot and save it as PNG; returns ``path``.

    ``systems``: name -> (scores, labels) with labels 1 = target, 0 = non-target. Each curve
    carries its EER point (circle) and minDCF (p_target 0.05) operating point (square); the
    legend gives both values.
    """
    if not systems:
        raise ValueError("plot_det needs at least one system")
    curves = {name: det_curve(*sl) for name, sl in systems.items()}
    eers = {name: eer_point(*sl) for name, sl in systems.items()}
    dcfs = {name: min_dcf_point(*sl)[:2] for name, sl in systems.items()}
    low, high = _axis_range(list(curves.values()),
                            [max(p) for p in list(eers.values()) + list(dcfs.values())])
    fig = _figure(6.4, 6.0)
    ax = fig.add_subplot()
    for k, (name, (scores, labels)) in enumerate(systems.items()):
        color = COLORS[k % len(COLORS)]
        far, frr = curves[name]
        m = compute_metrics(scores, labels)
        ax.plot(probit(far), probit(frr), color=color, lw=1.8, drawstyle="steps-post",
                label=f"{name}  (EER {m.eer:.2f}%, minDCF {m.min_dcf_005:.3f})")
        # an operating point at 0% or 100% sits on the plot's edge rather than off it
        inside = lambda point: np.clip(probit(point), *probit([low, high]))
        ax.plot(*inside(eers[name]), "o", ms=8, mfc="white", mec=color, mew=2, zorder=5, clip_on=False)
        ax.plot(*inside(dcfs[name]), "s", ms=7, mfc=color, mec="white", mew=1, zorder=5, clip_on=False)
    span = probit([low, high])
    ax.plot(span, span, color="#999999", lw=0.8, ls=":", zorder=0)
    ticks = _spaced(TICKS[(TICKS >= low) & (TICKS <= high)])
    labels_text = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(probit(ticks), labels_text, fontsize=8)
    ax.set_yticks(probit(ticks), labels_text, fontsize=8)
    ax.set_xlim(*span)
    ax.set_ylim(*span)
    ax.set_aspect("equal")
    ax.grid(True, color="#dddddd", lw=0.6)
    ax.set_xlabel("False acceptance rate (%)")
    ax.set_ylabel("False rejection rate (%)")
    ax.set_title(title)
    handles, names = ax.get_legend_handles_labels()
    from matplotlib.lines import Line2D
    handles += [Line2D([], [], ls="", marker="o", mfc="white", mec="#555555", mew=2, ms=7),
                Line2D([], [], ls="", marker="s", mfc="#555555", mec="white", ms=7)]
    names += ["EER point", f"minDCF point (p_target {DCF_P:g})"]
    # DET curves run from top left to bottom right: the bottom-left corner stays free.
    ax.legend(handles, names, loc="lower left", fontsize=8, frameon=True, framealpha=0.95)
    _save(fig, path)
    return path


def plot_score_histogram(scores, labels, path: str, title: str = "Score distributions") -> str:
    """Target / non-target score histograms with the EER and minDCF thresholds; PNG."""
    scores, labels = _check(scores, labels)
    m = compute_metrics(scores, labels)
    dcf_threshold = min_dcf_point(scores, labels)[2]
    bins = np.histogram_bin_edges(scores, bins=min(60, max(10, len(scores) // 20)))
    fig = _figure(7.0, 4.8)
    ax = fig.add_subplot()
    for label, name, color in ((0, "non-target", COLORS[1]), (1, "target", COLORS[0])):
        part = scores[labels == label]
        ax.hist(part, bins=bins, density=True, color=color, alpha=0.35,
                label=f"{name} (n={len(part)})")
        ax.hist(part, bins=bins, density=True, histtype="step", color=color, lw=1.5)
    ax.axvline(m.eer_threshold, color="#222222", ls="--", lw=1.2,
               label=f"EER threshold {m.eer_threshold:.4g} (EER {m.eer:.2f}%)")
    ax.axvline(dcf_threshold, color="#222222", ls=":", lw=1.4,
               label=f"minDCF threshold {dcf_threshold:.4g} (p_target {DCF_P:g})")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.grid(True, axis="y", color="#e5e5e5", lw=0.6)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    _save(fig, path)
    return path


def write_report(directory: str, scores, labels, trials: Sequence | None = None,
                 name: str = "system", extra: dict | None = None) -> dict[str, str]:
    """One system's report in ``directory``: ``det.png``, ``score_hist.png``,
    ``metrics.json`` and ``scores.txt`` (``label path1 path2 score`` when ``trials`` are
    given, else ``label score``). Returns {kind: path}."""
    os.makedirs(directory, exist_ok=True)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    metrics = compute_metrics(scores, labels).as_dict()
    metrics.update({"system": name, **(extra or {})})
    if trials is not None:
        lines = [f"{t.label} {t.path1} {t.path2} {s:.8g}" for t, s in zip(trials, scores)]
    else:
        lines = [f"{int(l)} {s:.8g}" for l, s in zip(labels, scores)]
    paths = {"det": os.path.join(directory, "det.png"),
             "hist": os.path.join(directory, "score_hist.png"),
             "metrics": os.path.join(directory, "metrics.json"),
             "scores": os.path.join(directory, "scores.txt")}
    plot_det({name: (scores, labels)}, paths["det"], title=f"DET curve: {name}")
    plot_score_histogram(scores, labels, paths["hist"], title=f"Score distributions: {name}")
    atomic_write_text(paths["metrics"], json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(paths["scores"], "\n".join(lines) + "\n")
    return paths


def write_comparison(directory: str, systems: Mapping[str, tuple[Sequence[float], Sequence[int]]],
                     title: str = "DET curves") -> dict[str, str]:
    """Several systems on one DET plot (``det_compare.png``) and their metrics
    (``metrics_compare.json``: name -> metrics)."""
    os.makedirs(directory, exist_ok=True)
    paths = {"det": os.path.join(directory, "det_compare.png"),
             "metrics": os.path.join(directory, "metrics_compare.json")}
    plot_det(systems, paths["det"], title=title)
    table = {name: compute_metrics(s, l).as_dict() for name, (s, l) in systems.items()}
    atomic_write_text(paths["metrics"], json.dumps(table, indent=2) + "\n")
    return paths
