from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from capsv.data.sampler import SamplerError, SpeakerBatchSampler


def _labels(counts: list[int]) -> list[int]:
    """Utterances per speaker -> a shuffled label list (dataset order must not matter)."""
    labels = [s for s, n in enumerate(counts) for _ in range(n)]
    return list(np.random.default_rng(0).permutation(labels))


COUNTS = [1, 2, 5, 7, 9, 12, 30, 250] + [6] * 12   # 20 speakers; two too small for M=3


def test_batches_hold_distinct_speakers_in_utterance_major_layout():
    labels = _labels(COUNTS)
    b, m, cap = 4, 3, 20
    sampler = SpeakerBatchSampler(labels, batch_size=b, nSpeakers=m, max_seg_per_spk=cap, seed=1)
    batches = list(sampler)
    assert batches and all(len(batch) == b * m for batch in batches)
    seen = Counter()
    for batch in batches:
        rows = np.asarray([labels[i] for i in batch]).reshape(m, b)
        assert (rows == rows[0]).all()              # row r of every utterance group: speaker r mod B
        assert len(set(rows[0])) == b               # no speaker twice in a batch
        seen.update(batch)
    assert max(seen.values()) == 1                  # no utterance twice in an epoch
    per_speaker = Counter(labels[i] for i in seen)
    for speaker, n in per_speaker.items():
        assert n % m == 0 and n <= cap
        assert COUNTS[speaker] >= m
    # 250 utterances are capped at 20 and rounded down to 18 = 6 groups; groups left in an
    # incomplete last batch are counted, not lost silently.
    plan = sampler.plan()
    assert plan.groups == sum(min(n, cap) // m for n in COUNTS)
    assert per_speaker[7] <= 18
    assert len(seen) // m + plan.unused_groups == plan.groups


def test_plan_is_deterministic_for_seed_and_epoch():
    labels = _labels(COUNTS)
    make = lambda seed: SpeakerBatchSampler(labels, 4, 3, 20, seed=seed)  # noqa: E731
    a, b = make(5), make(5)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    c = make(6)
    c.set_epoch(3)
    assert list(a) != list(c)


def test_an_interrupted_epoch_continues_with_the_batches_it_had_not_reached():
    labels = _labels(COUNTS)
    sampler = SpeakerBatchSampler(labels, 4, 3, 20, seed=5, rank=1, world_size=2)
    sampler.set_epoch(3)
    whole = list(sampler)
    sampler.set_epoch(3, start=2)
    assert len(whole) > 2 and list(sampler) == whole[2:] and len(sampler) == len(whole) - 2
    sampler.set_epoch(4)                          # the next epoch starts from its beginning
    assert len(sampler) == len(sampler.local_batches())


def test_skipped_speakers_are_counted_and_logged():
    sampler = SpeakerBatchSampler(_labels(COUNTS), 4, 3, 20)
    assert sampler.skipped_speakers == [0, 1]
    assert "2 speaker(s) skipped with fewer than 3 utterances" in sampler.describe()


def test_rank_shares_are_disjoint_equal_and_cover_the_global_plan():
    labels = _labels([9] * 40)
    whole = SpeakerBatchSampler(labels, 5, 3, 100, seed=2)
    whole.set_epoch(7)
    plan = whole.plan().batches
    shares = []
    for rank in range(3):
        s = SpeakerBatchSampler(labels, 5, 3, 100, seed=2, rank=rank, world_size=3)
        s.set_epoch(7)
        shares.append(list(s))
    assert len({len(share) for share in shares}) == 1               # same number of steps
    flat = [tuple(b) for share in shares for b in share]
    assert len(flat) == len(set(flat)) == len(plan) - len(plan) % 3  # disjoint, cut to a multiple
    assert set(flat) == {tuple(b) for b in plan[:len(flat)]}


def test_groups_whose_speaker_is_taken_wait_instead_of_being_dropped():
    # 5 speakers x 10 groups, batch of 5: every batch needs all five speakers. Dropping each
    # group whose speaker is already in the batch (the reference) keeps only 4-6 batches here.
    for seed in range(3):
        plan = SpeakerBatchSampler(_labels([20] * 5), batch_size=5, nSpeakers=2, seed=seed).plan()
        assert plan.groups == 50
        assert len(plan.batches) == 10 and plan.unused_groups == 0


def test_batch_size_above_eligible_speakers_is_a_clear_error():
    with pytest.raises(SamplerError, match=r"--batch_size 19 .* only 18 speaker\(s\).*lower"):
        SpeakerBatchSampler(_labels(COUNTS), batch_size=19, nSpeakers=3)


@pytest.mark.parametrize("kwargs, message", [
    ({"nSpeakers": 0}, "--nSpeakers must be at least 1"),
    ({"max_seg_per_spk": 2}, "--max_seg_per_spk 2 is smaller than --nSpeakers 3"),
    ({"rank": 2, "world_size": 2}, "rank 2 is outside world_size 2"),
])
def test_bad_settings_are_rejected(kwargs, message):
    args = {"batch_size": 2, "nSpeakers": 3, **kwargs}
    with pytest.raises(SamplerError, match=message):
        SpeakerBatchSampler(_labels(COUNTS), **args)


def _reference_plan(labels, batch_size, m, cap, seed, epoch):
    """The plan as the sampler computed it before issue 14 (Python lists, one group at a time):
    the vectorised sampler must deal exactly these batches."""
    rng = np.random.default_rng([seed, epoch])
    by_speaker = {}
    for index, speaker in enumerate(labels):
        by_speaker.setdefault(int(speaker), []).append(index)
    groups = []
    for speaker, utts in sorted(by_speaker.items()):
        if len(utts) < m:
            continue
        utts = np.asarray(utts, dtype=np.int64)
        n = min(len(utts), cap)
        n -= n % m
        chosen = utts[rng.permutation(len(utts))[:n]]
        groups.extend((speaker, chosen[i:i + m]) for i in range(0, n, m))
    order = rng.permutation(len(groups))
    batches, current, speakers, waiting = [], [], set(), []

    def add(group):
        current.append(group[1])
        speakers.add(group[0])
        if len(current) == batch_size:
            batches.append(np.stack(current, axis=1).reshape(-1).tolist())
            current.clear()
            speakers.clear()

    for group in (groups[i] for i in order):
        if group[0] in speakers:
            waiting.append(group)
            continue
        add(group)
        if not current and waiting:
            still_waiting = []
            for queued in waiting:
                if queued[0] in speakers:
                    still_waiting.append(queued)
                else:
                    add(queued)
            waiting = still_waiting
    return batches, len(groups), len(current) + len(waiting)


@pytest.mark.parametrize("counts, b, m, cap", [
    (COUNTS, 4, 3, 20),
    (COUNTS, 2, 1, 5),
    ([20] * 5, 5, 2, 100),            # every batch needs every speaker: many groups wait
    ([3] * 7 + [40, 60], 3, 3, 30),   # two big speakers collide often
    ([9] * 40, 5, 3, 100),
])
def test_plan_deals_the_same_batches_as_the_reference_algorithm(counts, b, m, cap):
    # labels that are neither dense nor in order: speaker ids 3, 10, 17, ...
    labels = [3 + 7 * s for s in _labels(counts)]
    for seed in (0, 1, 7):
        for epoch in (1, 2):
            batches, groups, unused = _reference_plan(labels, b, m, cap, seed, epoch)
            sampler = SpeakerBatchSampler(labels, b, m, cap, seed=seed)
            plan = sampler.plan(epoch)
            assert (plan.batches, plan.groups, plan.unused_groups) == (batches, groups, unused)
            for world_size in (2, 3):
                usable = len(batches) - len(batches) % world_size
                for rank in range(world_size):
                    share = SpeakerBatchSampler(np.asarray(labels), b, m, cap, seed=seed,
                                                rank=rank, world_size=world_size)
                    share.set_epoch(epoch)
                    assert list(share) == batches[rank:usable:world_size]
