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

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..errors import CapsvError


class SamplerError(CapsvError):
    """A sampler configuration that cannot produce a single batch."""


@dataclass(frozen=True)
class SpeakerIndex:
    """Utterance indices grouped by speaker (CSR layout), built once with numpy.

    For N utterances of S distinct labels:

    - ``speakers`` (S,): the distinct labels, ascending;
    - ``order`` (N,): utterance indices grouped by speaker, in list order within a speaker;
      speaker ``k``'s utterances are ``order[offsets[k]:offsets[k + 1]]``;
    - ``offsets`` (S + 1,);
    - ``group`` (N,): the ``k`` of each utterance; ``slot`` (N,): its position in ``order``.

    Everything is a numpy array: a forked DataLoader worker shares these pages instead of
    copying a million Python objects as reference counting touches them.
    """

    speakers: np.ndarray
    order: np.ndarray
    offsets: np.ndarray
    group: np.ndarray
    slot: np.ndarray

    @classmethod
    def from_labels(cls, labels) -> "SpeakerIndex":
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        n = len(labels)
        order = np.argsort(labels, kind="stable")     # stable: list order within a speaker
        ordered = labels[order]
        starts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        offsets = np.concatenate(([0], starts, [n])) if n else np.zeros(1, np.int64)
        counts = np.diff(offsets)
        group = np.empty(n, np.int64)
        group[order] = np.repeat(np.arange(len(counts)), counts)
        slot = np.empty(n, np.int64)
        slot[order] = np.arange(n)
        return cls(ordered[offsets[:-1]], order, offsets.astype(np.int64), group, slot)

    @property
    def counts(self) -> np.ndarray:
        """(S,) utterances per speaker."""
        return np.diff(self.offsets)

    def utterances(self, k: int) -> np.ndarray:
        """The utterance indices of the ``k``-th speaker, in list order (a view)."""
        return self.order[self.offsets[k]:self.offsets[k + 1]]

    def same_speaker(self, index: int) -> tuple[np.ndarray, int]:
        """(utterances of ``index``'s speaker in list order, position of ``index`` among them)."""
        k = self.group[index]
        return self.utterances(k), int(self.slot[index] - self.offsets[k])


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's global batches (each a flat, utterance-major index list) and its bookkeeping."""

    batches: list[list[int]]
    groups: int                 # groups of nSpeakers utterances formed this epoch
    unused_groups: int          # groups left in an incomplete last batch, or waiting at the end

    @property
    def used_utterances(self) -> int:
        return sum(len(b) for b in self.batches)


def fill_batches(speakers: list[int], batch_size: int) -> tuple[list[list[int]], int]:
    """Greedy filling of batches of ``batch_size`` distinct speakers from groups in the given
    order (``speakers[g]``: the speaker of group ``g``). A group whose speaker is already in
    the batch being filled waits; whenever a batch is completed, the waiting groups are
    offered again, oldest first. Returns (each batch's group numbers, groups left over)."""
    batches: list[list[int]] = []
    current: list[int] = []
    taken: set[int] = set()
    waiting: list[int] = []
    for group, speaker in enumerate(speakers):
        if speaker in taken:
            waiting.append(group)
            continue
        current.append(group)
        taken.add(speaker)
        if len(current) < batch_size:
            continue
        batches.append(current)
        current, taken = [], set()
        still_waiting = []
        for queued in waiting:                 # a batch was just completed: serve the queue
            if speakers[queued] in taken:
                still_waiting.append(queued)
                continue
            current.append(queued)
            taken.add(speakers[queued])
            if len(current) == batch_size:
                batches.append(current)
                current, taken = [], set()
        waiting = still_waiting
    return batches, len(current) + len(waiting)


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
        index = SpeakerIndex.from_labels(labels)
        eligible = index.counts >= self.nSpeakers
        self.utterances = {int(index.speakers[k]): index.utterances(k)
                           for k in np.flatnonzero(eligible)}
        self.skipped_speakers = index.speakers[~eligible].tolist()
        self._speaker_ids = index.speakers[eligible]
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
        """Groups and their shuffle drawn from ``rng`` in the reference's order (one
        permutation per speaker, ascending, then one over all groups), then the greedy fill."""
        m = self.nSpeakers
        chosen, groups_per_speaker = [], []
        for utts in self.utterances.values():
            n = min(len(utts), self.max_seg_per_spk)
            n -= n % m
            chosen.append(utts[rng.permutation(len(utts))[:n]])
            groups_per_speaker.append(n // m)
        members = np.concatenate(chosen).reshape(-1, m)           # (G, M): one group per row
        owners = np.repeat(self._speaker_ids, groups_per_speaker)  # (G,) speaker of each group
        order = rng.permutation(len(members))
        rows, unused = fill_batches(owners[order].tolist(), self.batch_size)
        if not rows:
            return EpochPlan([], len(members), unused)
        # (batches, B, M) -> (batches, M, B) -> flat: utterance-major, as the losses expect
        picked = members[order][np.asarray(rows)]
        batches = picked.transpose(0, 2, 1).reshape(len(rows), -1).tolist()
        return EpochPlan(batches, len(members), unused)

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
