"""Trial-list evaluation (spec §5), fast.

1. Validate everything first (list syntax, every missing file, every unreadable header,
   wrong sample rates) so bad input fails before any network work.
2. Run every distinct file through the backbone once: ``num_eval`` crops of ``eval_frames``.
   TAP/SAP keep the crops' unit-norm embeddings; CAP keeps the frames and their
   meta-projections.
3. Score trials in chunks. TAP/SAP: the mean of the crops' cosine matrix equals the dot
   product of the mean unit embeddings. CAP: all crop pairs of many trials in one batched call
   of the low-cost exact form, never one Python iteration per trial.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .audio import AudioError, audio_info, load_eval_crops
from .errors import CapsvError
from .data.lists import Trial, missing_files, read_trials, trial_files
from .metrics import Metrics, compute_metrics
from .models import SpeakerNet


class EvalInputError(CapsvError):
    """Bad evaluation input, reported before any heavy computation."""


def validate_inputs(trials: list[Trial], test_path: str, list_name: str = "trial list") -> list[str]:
    """Distinct relative paths of the trials, after checking that each one is usable audio."""
    files = trial_files(trials)
    missing = missing_files(test_path, files)
    if missing:
        shown = "\n  ".join(missing[:50]) + (f"\n  ... {len(missing) - 50} more" if len(missing) > 50 else "")
        raise EvalInputError(f"{len(missing)} of {len(files)} files in {list_name} are missing "
                             f"under --test_path {test_path}:\n  {shown}")
    problems = []
    for rel in files:
        try:
            audio_info(os.path.join(test_path, rel))
        except AudioError as exc:
            problems.append(str(exc))
    if problems:
        raise EvalInputError(f"{len(problems)} unusable audio file(s):\n  " + "\n  ".join(problems[:50]))
    return files


class EvalCrops(Dataset):
    def __init__(self, paths: list[str], eval_frames: int, num_eval: int):
        self.paths, self.eval_frames, self.num_eval = paths, eval_frames, num_eval

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        crops = load_eval_crops(self.paths[index], self.eval_frames, self.num_eval)
        return index, torch.from_numpy(crops)


def _batches_of_files(dataset: EvalCrops, files_per_batch: int, workers: int):
    loader = DataLoader(dataset, batch_size=files_per_batch, num_workers=workers,
                        collate_fn=list, persistent_workers=False)
    yield from loader


@dataclass
class FileFeatures:
    """Per-file evaluation features. TAP/SAP: ``emb`` (num_eval, E) unit-norm.
    CAP: ``frames`` (num_eval, D, T) and ``proj`` (num_eval, T, D) unit-norm projections."""
    emb: dict[int, torch.Tensor] = field(default_factory=dict)
    frames: dict[int, torch.Tensor] = field(default_factory=dict)
    proj: dict[int, torch.Tensor] = field(default_factory=dict)


@torch.inference_mode()
def extract_features(net: SpeakerNet, paths: list[str], eval_frames: int = 350, num_eval: int = 10,
                     device: torch.device | str = "cpu", workers: int = 0,
                     files_per_batch: int = 4, progress: bool = True) -> FileFeatures:
    net.eval()
    feats = FileFeatures()
    if eval_frames <= 0:
        files_per_batch = 1  # whole utterances differ in length
    dataset = EvalCrops(paths, eval_frames, num_eval)
    bar = tqdm(total=len(paths), desc="files", unit="file", disable=not progress, leave=False)
    for batch in _batches_of_files(dataset, files_per_batch, workers):
        indices = [i for i, _ in batch]
        counts = [c.shape[0] for _, c in batch]
        frames = net.frames(torch.cat([c for _, c in batch]).to(device))
        for index, part in zip(indices, frames.split(counts)):
            if net.pairwise:
                feats.frames[index] = part
                feats.proj[index] = net.pooling.project(part)
            else:
                feats.emb[index] = F.normalize(net.pooling(part), dim=-1)
        bar.update(len(batch))
    bar.close()
    return feats


@torch.inference_mode()
def score_pairs(net: SpeakerNet, feats: FileFeatures, pairs: np.ndarray,
                chunk: int = 128, progress: bool = True) -> np.ndarray:
    """Scores of (index1, index2) file pairs, file 1 as CAP support, file 2 as query."""
    scores = np.empty(len(pairs), dtype=np.float64)
    bar = tqdm(total=len(pairs), desc="trials", unit="trial", disable=not progress, leave=False)
    if not net.pairwise:
        means = {i: e.mean(dim=0) for i, e in feats.emb.items()}
        for start in range(0, len(pairs), 4096):
            part = pairs[start:start + 4096]
            a = torch.stack([means[i] for i in part[:, 0]])
            b = torch.stack([means[i] for i in part[:, 1]])
            scores[start:start + len(part)] = (a * b).sum(dim=1).double().cpu().numpy()
            bar.update(len(part))
        bar.close()
        return scores
    # Trials whose sides have the same frame counts can share one batched call.
    buckets = defaultdict(list)
    for row, (i, j) in enumerate(pairs):
        buckets[(feats.frames[i].shape, feats.frames[j].shape)].append(row)
    for rows in buckets.values():
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            sup = [pairs[r, 0] for r in part]
            qry = [pairs[r, 1] for r in part]
            cos = net.pooling.score_grouped(
                torch.stack([feats.frames[i] for i in sup]), torch.stack([feats.frames[i] for i in qry]),
                hs=torch.stack([feats.proj[i] for i in sup]), hq=torch.stack([feats.proj[i] for i in qry]))
            scores[part] = cos.flatten(1).mean(dim=1).double().cpu().numpy()
            bar.update(len(part))
    bar.close()
    return scores


@dataclass
class EvalResult:
    trials: list[Trial]
    scores: np.ndarray
    metrics: Metrics

    def score_lines(self) -> list[str]:
        return [f"{t.label} {t.path1} {t.path2} {s:.8g}" for t, s in zip(self.trials, self.scores)]


def evaluate_list(net: SpeakerNet, test_list: str, test_path: str, eval_frames: int = 350,
                  num_eval: int = 10, device: torch.device | str = "cpu", workers: int = 0,
                  progress: bool = True) -> EvalResult:
    trials = read_trials(test_list)
    n_target = sum(t.label for t in trials)
    if n_target in (0, len(trials)):
        raise EvalInputError(f"{test_list}: all {len(trials)} trials are "
                             f"{'non-target' if n_target == 0 else 'target'}; EER and minDCF "
                             "need both labels 1 and 0")
    files = validate_inputs(trials, test_path, test_list)
    index = {f: i for i, f in enumerate(files)}
    pairs = np.array([(index[t.path1], index[t.path2]) for t in trials], dtype=np.int64)
    net = net.to(device)
    feats = extract_features(net, [os.path.join(test_path, f) for f in files], eval_frames,
                             num_eval, device=device, workers=workers, progress=progress)
    scores = score_pairs(net, feats, pairs, progress=progress)
    metrics = compute_metrics(scores, [t.label for t in trials])
    return EvalResult(trials, scores, metrics)
