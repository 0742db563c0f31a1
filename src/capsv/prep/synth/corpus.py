"""A built-in multi-speaker corpus: procedural voices in VoxCeleb's layout, no download.

``generate_corpus(CorpusConfig(...), out_dir)`` writes::

    out_dir/synth_manifest.json      the settings (a re-run with the same ones is a no-op)
    out_dir/id0NNNN/<session>/NNNNN.wav   training speakers, 16 kHz mono int16
    out_dir/id9NNNN/<session>/NNNNN.wav   test speakers (disjoint from training)
    out_dir/train_list.txt           '<speaker> <speaker>/<session>/<clip>.wav'
    out_dir/veri_test.txt            '<0|1> <path1> <path2>', balanced
    out_dir/speakers.tsv             each speaker's main traits (for curiosity and debugging)
    out_dir/synth.done               written last: the corpus is complete

Both lists are relative to ``out_dir`` (use it as --train_path and --test_path).

What makes it a fair test rather than a toy:

- Speakers differ in vocal-tract length, F0 level and range, glottal pulse shape, spectral
  tilt, breathiness, rate, jitter/shimmer and their own vowel formants (:mod:`.voice`);
  the population overlaps, so some speakers sound alike.
- Each session ("video") has its own room, microphone EQ, band limits, background noise and
  level (:mod:`.channel`), and the speaker's own mood / effort shifts F0, tilt and rate.
- Target trials are mostly cross-session, so a system that matches channels instead of voices
  gains nothing; half of the non-target trials pair look-alike speakers (same sex, nearest
  traits), like VoxCeleb1-H pairs speakers of the same gender and nationality.

Determinism: every file is a pure function of (seed, speaker, session, clip) and the settings,
through its own ``numpy`` generator, so the bytes do not depend on the number of worker
processes or the order they run in (on one machine and numpy version: numpy's vectorised
math may round differently on other CPUs).
"""
from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
import multiprocessing

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ...errors import CapsvError

from ...protocol import SAMPLE_RATE
from ...utils import atomic_path, atomic_write_text
from .channel import apply_channel, draw_channel
from .voice import SpeakerTraits, draw_speaker, draw_speaking_state, synth_dry

SYNTH_VERSION = 2            # 2: stronger session EQ (channel.draw_channel)
MANIFEST = "synth_manifest.json"
DONE = "synth.done"
TRAIN_LIST = "train_list.txt"
TRIAL_LIST = "veri_test.txt"
SPEAKER_TABLE = "speakers.tsv"

# Namespaces of the per-item random generators: default_rng([seed, TAG, ...]).
TAG_TRAITS, TAG_PLAN, TAG_SESSION, TAG_UTTERANCE, TAG_TRIALS = range(5)
TRAIN, TEST = 0, 1


class SynthError(CapsvError):
    """Bad corpus settings or an output folder that cannot be used."""


@dataclass(frozen=True)
class CorpusConfig:
    """Corpus settings; everything that changes the bytes written is in here."""

    speakers: int = 100                # training speakers
    test_speakers: int = 20            # disjoint test speakers
    utterances: int = 12               # per training speaker
    test_utterances: int = 0           # per test speaker; 0: as many as ``utterances``
    min_seconds: float = 2.0
    max_seconds: float = 4.0
    min_sessions: int = 3              # sessions ("videos") per speaker
    max_sessions: int = 5
    trials: int = 800
    same_session_targets: float = 0.1  # share of target trials within one session
    hard_nontargets: float = 0.5       # share of non-targets between look-alike speakers
    seed: int = 0

    def validate(self) -> None:
        checks = [
            (1 <= self.speakers <= 9999, "--speakers must be 1..9999"),
            (2 <= self.test_speakers <= 9999, "--test_speakers must be 2..9999 (non-target trials need two)"),
            (self.utterances >= 2, "--utterances must be at least 2"),
            (self.test_utterances == 0 or self.test_utterances >= 2,
             "--test_utterances must be 0 (as --utterances) or at least 2 (target trials need two)"),
            (0.5 <= self.min_seconds <= self.max_seconds <= 60.0,
             "need 0.5 <= --min_seconds <= --max_seconds <= 60"),
            (1 <= self.min_sessions <= self.max_sessions, "need 1 <= --min_sessions <= --max_sessions"),
            (self.trials >= 2, "--trials must be at least 2"),
            (0.0 <= self.same_session_targets <= 1.0, "--same_session_targets must be in [0, 1]"),
            (0.0 <= self.hard_nontargets <= 1.0, "--hard_nontargets must be in [0, 1]"),
            (self.seed >= 0, "--seed must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise SynthError(message)
        per_test = self.clips_per_speaker(TEST)
        pairs = self.test_speakers * per_test * (per_test - 1) // 2
        if self.trials // 2 > pairs // 2:
            raise SynthError(f"{self.trials} trials need {self.trials // 2} distinct target pairs, but "
                             f"{self.test_speakers} test speakers x {per_test} utterances "
                             f"allow at most {pairs // 2} (half of their {pairs} same-speaker pairs); "
                             f"lower --trials to {2 * (pairs // 2)} or less, or raise --test_utterances / "
                             "--test_speakers")

    def audio_seconds(self) -> float:
        """Expected seconds of audio in the corpus."""
        mean = 0.5 * (self.min_seconds + self.max_seconds)
        return (self.speakers * self.utterances + self.test_speakers * self.clips_per_speaker(TEST)) * mean

    def clips_per_speaker(self, role: int) -> int:
        """Clips of each training (``TRAIN``) or test (``TEST``) speaker."""
        return (self.test_utterances or self.utterances) if role == TEST else self.utterances


# The demo: 120 speakers, 1.2 h of audio. Many speakers with few clips each rather than the
# other way round: what a verifier learns for unseen voices grows with the number of training
# speakers (a small trained probe reached 18.5 % EER with 120 x 10 clips against 23 % with
# 48 x 24 clips of the same total length, on the same test speakers).
DEMO_CORPUS = CorpusConfig()
# For CI and quick checks: ~0.1 h of audio, a few seconds.
QUICK_CORPUS = CorpusConfig(speakers=8, test_speakers=8, utterances=8, min_seconds=1.5,
                            max_seconds=2.5, min_sessions=2, max_sessions=4, trials=160)
PRESETS = {"demo": DEMO_CORPUS, "quick": QUICK_CORPUS}


# ---------------------------------------------------------------------------------------------
# The plan: who says what, in which session, for how long (cheap, made in the main process)

@dataclass(frozen=True)
class Clip:
    speaker: str
    session: str
    session_index: int
    clip_index: int            # 1-based within the session, as in VoxCeleb
    n_samples: int

    @property
    def relpath(self) -> str:
        return f"{self.speaker}/{self.session}/{self.clip_index:05d}.wav"


@dataclass(frozen=True)
class SpeakerPlan:
    role: int                  # TRAIN or TEST
    index: int                 # within the role
    speaker: str
    clips: tuple[Clip, ...]


def speaker_id(role: int, index: int) -> str:
    return f"id{9 if role == TEST else 0}{index + 1:04d}"


_ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"))


def plan_speaker(config: CorpusConfig, role: int, index: int) -> SpeakerPlan:
    rng = np.random.default_rng([config.seed, TAG_PLAN, role, index])
    speaker = speaker_id(role, index)
    n_clips = config.clips_per_speaker(role)
    n_sessions = min(int(rng.integers(config.min_sessions, config.max_sessions + 1)), n_clips)
    names: list[str] = []
    while len(names) < n_sessions:                     # YouTube-like 11-character video ids
        name = "".join(rng.choice(_ID_CHARS, 11))
        if name not in names:
            names.append(name)
    per_session = np.ones(n_sessions, dtype=np.int64)
    np.add.at(per_session, rng.integers(0, n_sessions, n_clips - n_sessions), 1)
    lengths = rng.uniform(config.min_seconds, config.max_seconds, n_clips)
    clips, k = [], 0
    for s, count in enumerate(per_session):
        for c in range(int(count)):
            clips.append(Clip(speaker, names[s], s, c + 1, int(round(lengths[k] * SAMPLE_RATE))))
            k += 1
    return SpeakerPlan(role, index, speaker, tuple(clips))


def plan_corpus(config: CorpusConfig) -> list[SpeakerPlan]:
    return ([plan_speaker(config, TRAIN, i) for i in range(config.speakers)]
            + [plan_speaker(config, TEST, i) for i in range(config.test_speakers)])


def speaker_traits(config: CorpusConfig, role: int, index: int) -> SpeakerTraits:
    return draw_speaker(np.random.default_rng([config.seed, TAG_TRAITS, role, index]))


# ---------------------------------------------------------------------------------------------
# Audio (runs in worker processes)

@lru_cache(maxsize=16)
def session_conditions(config: CorpusConfig, role: int, index: int, session: int):
    """(SpeakingState, Channel) of one session: shared by all its clips, drawn once."""
    key = [config.seed, TAG_SESSION, role, index, session]
    return (draw_speaking_state(np.random.default_rng(key + [0])),
            draw_channel(np.random.default_rng(key + [1])))


def synth_clip(config: CorpusConfig, plan: SpeakerPlan, clip: Clip,
               traits: SpeakerTraits | None = None) -> np.ndarray:
    """The int16 samples of one clip, a pure function of the settings and the clip's place."""
    if traits is None:
        traits = speaker_traits(config, plan.role, plan.index)
    state, channel = session_conditions(config, plan.role, plan.index, clip.session_index)
    rng = np.random.default_rng([config.seed, TAG_UTTERANCE, plan.role, plan.index,
                                 clip.session_index, clip.clip_index])
    return apply_channel(synth_dry(traits, state, clip.n_samples, rng), channel, rng)


def write_wav(path: str, samples: np.ndarray) -> None:
    """16 kHz mono PCM-16 WAV, written to a temporary name and renamed (never half a file)."""
    with atomic_path(path) as tmp:
        sf.write(tmp, samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def write_speaker(config: CorpusConfig, plan: SpeakerPlan, out_dir: str) -> tuple[int, float]:
    """Write every missing clip of one speaker; returns (clips written, seconds written)."""
    traits = speaker_traits(config, plan.role, plan.index)
    written, seconds = 0, 0.0
    for clip in plan.clips:
        path = os.path.join(out_dir, clip.relpath)
        if os.path.exists(path):                    # finished by an interrupted earlier run
            continue
        write_wav(path, synth_clip(config, plan, clip, traits))
        written, seconds = written + 1, seconds + clip.n_samples / SAMPLE_RATE
    return written, seconds


# ---------------------------------------------------------------------------------------------
# Lists

def train_lines(plans: list[SpeakerPlan]) -> list[str]:
    return sorted(f"{p.speaker} {c.relpath}" for p in plans if p.role == TRAIN for c in p.clips)


def _lookalikes(config: CorpusConfig, count: int = 2) -> list[list[int]]:
    """For every test speaker, the ``count`` others nearest in trait space."""
    vectors = np.stack([speaker_traits(config, TEST, i).vector() for i in range(config.test_speakers)])
    distance = np.sqrt(((vectors[:, None, :] - vectors[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(distance, np.inf)
    return [list(np.argsort(row, kind="stable")[:count]) for row in distance]


def make_trials(config: CorpusConfig, plans: list[SpeakerPlan]) -> list[tuple[int, str, str]]:
    """Balanced (label, path1, path2) trials over the test speakers, no pair twice."""
    tests = [p for p in plans if p.role == TEST]
    rng = np.random.default_rng([config.seed, TAG_TRIALS])
    n_target = config.trials // 2
    n_nontarget = config.trials - n_target
    hard = _lookalikes(config)
    seen: set[frozenset] = set()
    trials: list[tuple[int, str, str]] = []

    def add(label: int, a: Clip, b: Clip) -> bool:
        key = frozenset((a.relpath, b.relpath))
        if a.relpath == b.relpath or key in seen:
            return False
        seen.add(key)
        trials.append((label, a.relpath, b.relpath) if rng.random() < 0.5 else (label, b.relpath, a.relpath))
        return True

    def pick(clips, where=lambda c: True):
        options = [c for c in clips if where(c)]
        return options[int(rng.integers(len(options)))] if options else None

    order = rng.permutation(len(tests))
    for k in range(n_target):
        for _attempt in range(1000):
            plan = tests[order[k % len(tests)]]
            a = pick(plan.clips)
            same = rng.random() < config.same_session_targets
            b = pick(plan.clips, lambda c: c is not a and (c.session == a.session) == same)
            if b is not None and add(1, a, b):
                break
        else:
            raise SynthError("could not find enough distinct target pairs; lower --trials")
    for k in range(n_nontarget):
        for _attempt in range(1000):
            i = int(order[k % len(tests)])
            if rng.random() < config.hard_nontargets:
                j = int(hard[i][int(rng.integers(len(hard[i])))])
            else:
                j = int(rng.choice([x for x in range(len(tests)) if x != i]))
            if add(0, pick(tests[i].clips), pick(tests[j].clips)):
                break
        else:
            raise SynthError("could not find enough distinct non-target pairs; lower --trials")
    return [trials[i] for i in rng.permutation(len(trials))]


def speaker_table(config: CorpusConfig, plans: list[SpeakerPlan]) -> str:
    rows = ["speaker\trole\tsex\tf0_hz\tvtl_scale\ttilt_db\tbreathiness\trate\tsessions\tclips"]
    for p in plans:
        t = speaker_traits(config, p.role, p.index)
        rows.append(f"{p.speaker}\t{'test' if p.role == TEST else 'train'}\t{'F' if t.female else 'M'}\t"
                    f"{t.f0_hz:.1f}\t{t.vtl_scale:.3f}\t{t.tilt_db:.2f}\t{t.breathiness:.3f}\t"
                    f"{t.rate:.3f}\t{len({c.session for c in p.clips})}\t{len(p.clips)}")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------
# The output folder: manifest, resume, done marker

def _manifest(config: CorpusConfig) -> dict:
    return {"generator": "capsv synth", "synth_version": SYNTH_VERSION, "config": asdict(config)}


def check_out_dir(out_dir: str, config: CorpusConfig) -> str:
    """'done' (nothing to do), 'resume' (same settings, unfinished) or 'new'.

    A folder holding another corpus, or anything that is not a corpus, is an error.
    """
    manifest_path = os.path.join(out_dir, MANIFEST)
    if os.path.isfile(manifest_path):
        try:
            with open(manifest_path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as exc:
            raise SynthError(f"{manifest_path}: unreadable manifest ({exc}); delete {out_dir} "
                             "and generate again") from None
        new = _manifest(config)
        if old != new:
            before, after = old.get("config", {}), new["config"]
            changed = [f"{k}: {before.get(k)!r} -> {after[k]!r}" for k in after if before.get(k) != after[k]]
            if old.get("synth_version") != SYNTH_VERSION:
                changed.append(f"generator version {old.get('synth_version')!r} -> {SYNTH_VERSION}")
            raise SynthError(f"{out_dir} holds a corpus generated with other settings "
                             f"({'; '.join(changed) or 'unknown difference'}); use another --out "
                             "or delete that folder first")
        return "done" if os.path.isfile(os.path.join(out_dir, DONE)) else "resume"
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise SynthError(f"{out_dir} is not empty and holds no {MANIFEST}; give --out a new or "
                         "empty folder so no other files get mixed into the corpus")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SynthError(f"{out_dir} exists and is not a folder")
    return "new"


_TEMP_NAME = re.compile(r"^\..+\.tmp$")


def _remove_stale_temp_files(out_dir: str) -> None:
    """Temporary files left by a run that was killed mid-write (complete files are kept)."""
    for root, _dirs, files in os.walk(out_dir):
        for name in files:
            if _TEMP_NAME.match(name):
                os.unlink(os.path.join(root, name))


@dataclass
class CorpusSummary:
    out_dir: str
    status: str                # 'done' (already complete, nothing written) or 'generated'
    n_files: int
    audio_seconds: float       # in the whole corpus
    written_files: int = 0
    written_seconds: float = 0.0
    elapsed: float = 0.0
    workers: int = 1

    @property
    def train_list(self) -> str:
        return os.path.join(self.out_dir, TRAIN_LIST)

    @property
    def test_list(self) -> str:
        return os.path.join(self.out_dir, TRIAL_LIST)

    @property
    def realtime_factor(self) -> float:
        return self.written_seconds / self.elapsed if self.elapsed > 0 else float("nan")


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:                          # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _write_all(config: CorpusConfig, plans: list[SpeakerPlan], out_dir: str, workers: int,
               progress: bool) -> tuple[int, float]:
    total = sum(len(p.clips) for p in plans)
    bar = tqdm(total=total, desc="synth", unit="clip", disable=not progress)
    written, seconds = 0, 0.0
    if workers <= 1:
        for plan in plans:
            w, s = write_speaker(config, plan, out_dir)
            written, seconds = written + w, seconds + s
            bar.update(len(plan.clips))
    else:
        # spawn, not fork: the caller may hold threads (torch) that fork would copy mid-state.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(write_speaker, config, plan, out_dir): plan for plan in plans}
            for future in as_completed(futures):
                w, s = future.result()
                written, seconds = written + w, seconds + s
                bar.update(len(futures[future].clips))
    bar.close()
    return written, seconds


def generate_corpus(config: CorpusConfig, out_dir: str, workers: int | None = None,
                    progress: bool = True) -> CorpusSummary:
    """Generate (or finish, or confirm) the corpus in ``out_dir``; see the module docstring.

    ``workers`` > 1 runs speakers in spawned processes (safe beside torch's threads); a
    script that calls this needs the usual ``if __name__ == "__main__":`` guard then.
    """
    config.validate()
    workers = default_workers() if workers is None else max(1, int(workers))
    plans = plan_corpus(config)
    n_files = sum(len(p.clips) for p in plans)
    total_seconds = sum(c.n_samples for p in plans for c in p.clips) / SAMPLE_RATE
    status = check_out_dir(out_dir, config)
    if status == "done":
        return CorpusSummary(out_dir, "done", n_files, total_seconds, workers=workers)
    start = time.perf_counter()
    trials = make_trials(config, plans)          # before anything is written: fails fast
    os.makedirs(out_dir, exist_ok=True)
    if status == "resume":
        _remove_stale_temp_files(out_dir)
    else:
        atomic_write_text(os.path.join(out_dir, MANIFEST), json.dumps(_manifest(config), indent=2) + "\n")
    written, seconds = _write_all(config, plans, out_dir, workers, progress)
    atomic_write_text(os.path.join(out_dir, TRAIN_LIST), "\n".join(train_lines(plans)) + "\n")
    atomic_write_text(os.path.join(out_dir, TRIAL_LIST),
                      "".join(f"{label} {a} {b}\n" for label, a, b in trials))
    atomic_write_text(os.path.join(out_dir, SPEAKER_TABLE), speaker_table(config, plans))
    atomic_write_text(os.path.join(out_dir, DONE), f"{n_files} clips, {total_seconds:.1f} s of audio\n")
    return CorpusSummary(out_dir, "generated", n_files, total_seconds, written, seconds,
                         time.perf_counter() - start, workers)


def preset(name: str, **overrides) -> CorpusConfig:
    """A named preset ('demo' or 'quick') with some fields replaced."""
    if name not in PRESETS:
        raise SynthError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
