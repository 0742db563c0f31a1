"""Speaker-balanced batches for metric learning (spec §4, "Sampler per epoch").

A batch holds ``batch_size`` distinct speakers with ``nSpeakers`` utterances each. The
sampler yields flat lists of ``nSpeakers * batch_size`` utterance indices laid out
utterance-major::

    [utt 0 of speakers 0..B-1 | utt 1 of speakers 0..B-1 | ... ]

so rows ``0..B-1`` are the supports and query row ``r`` belongs to speaker ``r mod B``,
the layout the losses expect.

Per epoch, following the reference: for every speaker take a random ``min(n, max_seg_per_spk)``
of its utterances, rounded down to a multiple of ``nSpeakers``, cut them into groups of
``nSpeakers``; shuffle all groups; fill batches so no speaker appears twice in one batch.
One deliberate difference: a group whose speaker is already in the batch being filled waits
for the next batch instead of being thrown away (the reference drops it for the epoch).
Speakers with fewer than ``nSpeakers`` utterances cannot form a group and are skipped
(:attr:`SpeakerBatchSampler.skipped_speakers`).

Determinism and distributed training: the plan of an epoch depends only on
``(seed, epoch)``. Every rank computes the same global list of batches and takes batches
``rank, rank + world_size, ...``; the list is first cut to a multiple of ``world_size``, so
all ranks run the same number of steps and the shares are disjoint. An *epoch* therefore
means one pass over the same global plan whatever the number of ranks (each step then
consumes ``world_size`` batches), so the LR schedule per epoch does not shift when GPUs
are added.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..errors import CapsvError


class SamplerError(CapsvError):
    """A sampler configuration that cannot produce a single batch."""


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's global batches (each a flat, utterance-major index list) and its bookkeeping."""

    batches: list[list[int]]
    groups: int                 # groups of nSpeakers utterances formed this epoch
    unused_groups: int          # groups left in an incomplete last batch, or waiting at the end

    @property
    def used_utterances(self) -> int:
        return sum(len(b) for b in self.batches)


class SpeakerBatchSampler(Sampler[list[int]]):
    """Batch sampler for ``DataLoader(batch_sampler=...)``.

    Args:
        labels: speaker index of every utterance (position = dataset index).
        batch_size: distinct speakers per batch (B).
        nSpeakers: utterances per speaker per batch (M): 1 support + M-1 queries.
        max_seg_per_spk: at most this many utterances of one speaker per epoch.
        seed: with the epoch (:meth:`set_epoch`), fixes the whole plan.
        rank, world_size: this process's share of each epoch (see module docstring).
    """

    def __init__(self, labels: Sequence[int], batch_size: int, nSpeakers: int,
                 max_seg_per_spk: int = 100, seed: int = 0, rank: int = 0, world_size: int = 1):
        if nSpeakers < 1:
            raise SamplerError(f"--nSpeakers must be at least 1, got {nSpeakers}")
        if batch_size < 1:
            raise SamplerError(f"--batch_size must be at least 1, got {batch_size}")
        if max_seg_per_spk < nSpeakers:
            raise SamplerError(f"--max_seg_per_spk {max_seg_per_spk} is smaller than --nSpeakers "
                               f"{nSpeakers}: no speaker could form a group")
        if not 0 <= rank < world_size:
            raise SamplerError(f"rank {rank} is outside world_size {world_size}")
        self.batch_size, self.nSpeakers = int(batch_size), int(nSpeakers)
        self.max_seg_per_spk, self.seed = int(max_seg_per_spk), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        by_speaker: dict[int, list[int]] = defaultdict(list)
        for index, speaker in enumerate(labels):
            by_speaker[int(speaker)].append(index)
        self.utterances = {s: np.asarray(u, dtype=np.int64) for s, u in sorted(by_speaker.items())
                           if len(u) >= self.nSpeakers}
        self.skipped_speakers = sorted(s for s, u in by_speaker.items() if len(u) < self.nSpeakers)
        if self.batch_size > len(self.utterances):
            raise SamplerError(
                f"--batch_size {batch_size} needs {batch_size} distinct speakers per batch, but only "
                f"{len(self.utterances)} speaker(s) have at least --nSpeakers {nSpeakers} utterances "
                f"({len(self.skipped_speakers)} skipped); lower --batch_size or --nSpeakers")
        self.epoch, self.start = 0, 0
        self._plan: tuple[int, EpochPlan] | None = None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Deal ``epoch``'s batches from the ``start``-th of this rank's share on (a run
        continuing an interrupted epoch skips the batches it already trained on)."""
        self.epoch, self.start = int(epoch), int(start)

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The global plan of ``epoch`` (default: the current one), computed once and cached."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self._make_plan(np.random.default_rng([self.seed, epoch])))
        return self._plan[1]

    def _make_plan(self, rng: np.random.Generator) -> EpochPlan:
        m = self.nSpeakers
        groups: list[tuple[int, np.ndarray]] = []
        for speaker, utts in self.utterances.items():
            n = min(len(utts), self.max_seg_per_spk)
            n -= n % m
            chosen = utts[rng.permutation(len(utts))[:n]]
            groups.extend((speaker, chosen[i:i + m]) for i in range(0, n, m))
        order = rng.permutation(len(groups))
        batches, unused = self._fill_batches([groups[i] for i in order])
        return EpochPlan(batches, len(groups), unused)

    def _fill_batches(self, groups: list[tuple[int, np.ndarray]]) -> tuple[list[list[int]], int]:
        """Greedy filling; a group whose speaker is already in the batch waits for a later one."""
        batches, current, speakers, waiting = [], [], set(), []

        def add(group) -> None:
            current.append(group[1])
            speakers.add(group[0])
            if len(current) == self.batch_size:
                batches.append(np.stack(current, axis=1).reshape(-1).tolist())  # utterance-major
                current.clear()
                speakers.clear()

        for group in groups:
            if group[0] in speakers:
                waiting.append(group)
                continue
            add(group)
            if not current and waiting:          # a batch was just completed: serve the queue
                still_waiting = []
                for queued in waiting:
                    if queued[0] in speakers:
                        still_waiting.append(queued)
                    else:
                        add(queued)
                waiting = still_waiting
        return batches, len(current) + len(waiting)

    def local_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches: every ``world_size``-th of a plan cut to a multiple of it."""
        batches = self.plan(epoch).batches
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank:usable:self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.local_batches()[self.start:]

    def __len__(self) -> int:
        """The batches still to come this epoch (all of them unless ``start`` was given)."""
        return max(0, len(self.local_batches()) - self.start)

    def describe(self, epoch: int | None = None) -> str:
        """One log line about the epoch's plan, including skipped speakers."""
        plan = self.plan(epoch)
        text = (f"sampler: {len(self.utterances)} speakers x up to {self.max_seg_per_spk} utterances, "
                f"{plan.groups} groups of {self.nSpeakers} -> {len(plan.batches)} batches of "
                f"{self.batch_size} speakers ({plan.unused_groups} groups left over)")
        if self.world_size > 1:
            text += f"; rank {self.rank}/{self.world_size} runs {len(self.local_batches(epoch))} of them"
        if self.skipped_speakers:
            text += (f"; {len(self.skipped_speakers)} speaker(s) skipped with fewer than "
                     f"{self.nSpeakers} utterances")
        return text
