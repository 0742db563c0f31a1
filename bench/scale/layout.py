"""VoxCeleb-size folder layouts made of symlinks into a small pool of real audio.

The pool is a few hundred clips of the built-in synthetic corpus (``capsv synth``, 16 kHz
PCM16 WAV, 4-12 s, mean 8 s like VoxCeleb) plus some of them encoded as AAC ``.m4a``.
Every listed file of the layouts is a hard link (or symlink) to one pool clip, so the layouts have the real
file counts, folder shapes (``idXXXXX/<11-char video id>/NNNNN.wav``) and list formats while
holding only megabytes of audio:

- ``vox2/wav/``: VoxCeleb2 dev, 1,092,009 clips of 5,994 speakers in ~145.6 k videos, and
  ``vox2/m4a/``, the same names as ``.m4a`` (as VoxCeleb2 ships; the ``.wav`` train list
  reads them through capsv's m4a substitution). Lists: ``train_list.txt`` (every clip) and
  ``train_list_10.txt`` (10 clips of each of the same speakers: 59,940 lines).
- ``vox1/wav/``: VoxCeleb1, 153,516 clips of 1,251 speakers (40 of them the test speakers,
  4,874 clips) in ~22.5 k videos, and trial lists of the published sizes:
  ``veri_test.txt`` (O: 37,720 trials over 4,715 files of the test speakers),
  ``list_test_all.txt`` (E: 581,480 trials over 145,160 files), ``list_test_hard.txt``
  (H: 552,536 trials over ~137 k files; the exact H file count is not in our facts).

``--scale`` multiplies every count (speakers, clips, videos, trials, files), for quick runs.
Building is idempotent: a marker file, written last, records the settings and the build
time; a rerun with the same settings does nothing, an interrupted build resumes (existing
links are kept). Usage::

    python bench/scale/layout.py --root /tmp/capsv-scale [--scale 0.02]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src"))

from capsv.utils import atomic_write_text  # noqa: E402

LAYOUT_VERSION = 2   # 2: trial pairs distinct in either order
MARKER = ".capsv-scale-complete.json"
DEFAULT_ROOT = "/tmp/capsv-scale"

# Published sizes (shared/docs/voxceleb-facts.md; videos from the dataset's papers).
VOX2_SPEAKERS, VOX2_CLIPS, VOX2_VIDEOS = 5_994, 1_092_009, 145_569
SMALL_LIST_PER_SPEAKER = 10                       # 5,994 x 10 = 59,940 lines
VOX1_SPEAKERS, VOX1_CLIPS, VOX1_VIDEOS = 1_251, 153_516, 22_496
VOX1_TEST_SPEAKERS, VOX1_TEST_CLIPS = 40, 4_874
# (name, trials, distinct files, drawn from the test speakers only)
TRIAL_LISTS = (("veri_test.txt", 37_720, 4_715, True),
               ("list_test_all.txt", 581_480, 145_160, False),
               ("list_test_hard.txt", 552_536, 137_000, False))   # H file count: approximate

POOL_SPEAKERS, POOL_CLIPS_PER_SPEAKER, POOL_M4A = 30, 10, 64
VIDEO_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


@dataclass(frozen=True)
class Sizes:
    """Every count of the layouts at one scale factor."""

    scale: float
    vox2_speakers: int
    vox2_clips: int
    vox2_videos: int
    small_per_speaker: int
    vox1_speakers: int
    vox1_clips: int
    vox1_videos: int
    vox1_test_speakers: int
    vox1_test_clips: int
    trials: tuple          # ((name, trials, files, test_only), ...)

    @classmethod
    def at(cls, scale: float) -> "Sizes":
        def n(value: int, least: int = 1) -> int:
            return max(least, int(round(value * scale)))
        return cls(scale, n(VOX2_SPEAKERS, 4), n(VOX2_CLIPS, 40), n(VOX2_VIDEOS, 4),
                   SMALL_LIST_PER_SPEAKER, n(VOX1_SPEAKERS, 4), n(VOX1_CLIPS, 100),
                   n(VOX1_VIDEOS, 4), n(VOX1_TEST_SPEAKERS, 2), n(VOX1_TEST_CLIPS, 20),
                   tuple((name, n(t, 20), n(f, 10), test) for name, t, f, test in TRIAL_LISTS))


def layout_dir(root: str, scale: float) -> str:
    """One folder per scale factor, so a quick layout never collides with the full one."""
    return os.path.join(root, "full" if scale == 1.0 else f"scale-{scale:g}")


# --------------------------------------------------------------------------- the pool
def build_pool(root: str, speakers: int = POOL_SPEAKERS,
               progress: bool = False) -> tuple[list[str], list[str]]:
    """(wav clips, m4a clips): absolute paths of the pool, generated once under root/pool
    (root/pool-<speakers> for a pool of another size: tests use one of short clips)."""
    from capsv.prep.synth.corpus import CorpusConfig, generate_corpus

    suffix = "" if speakers == POOL_SPEAKERS else f"-{speakers}"
    out = os.path.join(root, "pool" + suffix)
    seconds = (4.0, 12.0) if speakers == POOL_SPEAKERS else (1.0, 2.0)   # short: tests only
    config = CorpusConfig(speakers=speakers, test_speakers=2,
                          utterances=POOL_CLIPS_PER_SPEAKER, min_seconds=seconds[0],
                          max_seconds=seconds[1],
                          min_sessions=2, max_sessions=3, trials=20, seed=0)
    generate_corpus(config, out, workers=None if speakers == POOL_SPEAKERS else 1, progress=progress)
    wavs = sorted(os.path.join(folder, name) for folder, _, names in os.walk(out)
                  for name in names if name.endswith(".wav"))
    m4a_dir = os.path.join(root, "pool-m4a" + suffix)
    marker = os.path.join(m4a_dir, MARKER)
    m4as = [os.path.join(m4a_dir, f"{i:05d}.m4a") for i in range(min(POOL_M4A, len(wavs)))]
    if not os.path.exists(marker):
        import soundfile as sf

        from capsv.audio import write_m4a
        os.makedirs(m4a_dir, exist_ok=True)
        for wav, m4a in zip(wavs, m4as):
            samples, _ = sf.read(wav, dtype="int16")
            partial = m4a + ".part"
            write_m4a(partial, samples)
            os.replace(partial, m4a)
        atomic_write_text(marker, json.dumps({"clips": len(m4as)}) + "\n")
    return wavs, m4as


# --------------------------------------------------------------------------- the plan
def split_counts(total: int, parts: int, least: int, rng: np.random.Generator,
                 sigma: float = 0.5) -> np.ndarray:
    """``parts`` positive counts summing to ``total``, each >= ``least``, lognormally spread
    (VoxCeleb speakers have from tens to hundreds of clips)."""
    if total < least * parts:
        raise ValueError(f"cannot split {total} into {parts} parts of at least {least}")
    weights = rng.lognormal(0.0, sigma, parts)
    share = weights / weights.sum() * (total - least * parts)
    counts = np.floor(share).astype(np.int64)
    remainder = total - least * parts - counts.sum()
    counts[np.argsort(counts - share)[:remainder]] += 1      # largest fractional parts first
    return counts + least


def video_ids(count: int, rng: np.random.Generator) -> list[str]:
    """Distinct 11-character YouTube-like ids."""
    ids: dict[str, None] = {}
    while len(ids) < count:
        draw = VIDEO_ALPHABET[rng.integers(0, len(VIDEO_ALPHABET), (count - len(ids), 11))]
        ids.update(dict.fromkeys("".join(row) for row in draw))
    return list(ids)[:count]


def plan_dataset(speaker_ids: list[str], clips: int, videos: int, least: int,
                 rng: np.random.Generator) -> list[tuple[str, list[str]]]:
    """(speaker, relative clip paths) per speaker: clips spread over videos, numbered per video."""
    per_speaker = split_counts(clips, len(speaker_ids), min(least, clips // len(speaker_ids)), rng)
    videos_each = np.maximum(1, np.round(per_speaker * videos / clips)).astype(np.int64)
    names = iter(video_ids(int(videos_each.sum()), rng))
    plan = []
    for speaker, n_clips, n_videos in zip(speaker_ids, per_speaker, videos_each):
        folders = [next(names) for _ in range(n_videos)]
        video_of = np.arange(n_clips) * n_videos // n_clips            # blocks of clips per video
        paths, number = [], {}
        for v in video_of:
            number[v] = number.get(v, 0) + 1
            paths.append(f"{speaker}/{folders[v]}/{number[v]:05d}.wav")
        plan.append((speaker, paths))
    return plan


def link_tree(tree: str, relpaths: list[str], pool: list[str], suffix: str = ".wav",
              offset: int = 0) -> int:
    """Link every relative path (its ``.wav`` replaced by ``suffix``) to a pool clip; links
    that exist are kept, so an interrupted build resumes. Returns the links created.

    Hard links (43 k/s here, no inode each, opened like the real files); a symbolic link,
    relative so it stays short, where a hard link is refused (other file system, too many
    links). Absolute symlink targets over 60 bytes cost ext4 a block each and ran at 2 k/s."""
    made, last_dir = 0, None
    for k, rel in enumerate(relpaths):
        path = os.path.join(tree, rel[:-4] + suffix)
        folder = os.path.dirname(path)
        if folder != last_dir:
            os.makedirs(folder, exist_ok=True)
            last_dir = folder
        source = pool[(k + offset) * 7919 % len(pool)]      # a prime spreads the pool
        try:
            os.link(source, path)
        except FileExistsError:
            continue
        except OSError:
            os.symlink(os.path.relpath(source, folder), path)
        made += 1
    return made


# --------------------------------------------------------------------------- trial lists
def make_trials(files: np.ndarray, speakers: np.ndarray, n_trials: int,
                rng: np.random.Generator, max_rounds: int = 100) -> np.ndarray:
    """(n_trials, 3) rows (label, file a, file b), ``speakers[file]`` giving each file's
    speaker: half targets, no pair twice (in either order), and each of ``files`` in some trial (every file
    is first the first side of one trial; random first sides follow)."""
    files = files[np.argsort(speakers[files], kind="stable")]
    spk = speakers[files]
    starts = np.searchsorted(spk, spk, side="left")
    counts = np.searchsorted(spk, spk, side="right") - starts
    want = {1: n_trials // 2, 0: n_trials - n_trials // 2}
    have = {1: 0, 0: 0}
    uncovered = rng.permutation(len(files))
    covered = np.zeros(len(files), dtype=bool)
    rows, seen = [], set()
    for _ in range(max_rounds):
        if have == want:
            return np.concatenate(rows)
        labels = np.array([1] * (want[1] - have[1]) + [0] * (want[0] - have[0]))
        rng.shuffle(labels)
        a = np.concatenate([uncovered, rng.integers(0, len(files), len(labels))])[:len(labels)]
        same = starts[a] + rng.integers(0, 1 << 40, len(a)) % counts[a]
        b = np.where(labels == 1, same, rng.integers(0, len(files), len(a)))
        ok = (b != a) & ((spk[a] == spk[b]) == (labels == 1))
        lo, hi = np.minimum(files[a], files[b]), np.maximum(files[a], files[b])
        keys = lo.astype(np.int64) * (int(files.max()) + 1) + hi      # a pair in either order
        fresh = [i for i in np.flatnonzero(ok) if not (keys[i] in seen or seen.add(keys[i]))]
        fresh = np.asarray(fresh, dtype=np.int64)
        rows.append(np.stack([labels[fresh], files[a[fresh]], files[b[fresh]]], axis=1))
        have[1] += int(labels[fresh].sum())
        have[0] = sum(len(r) for r in rows) - have[1]
        covered[a[fresh]] = covered[b[fresh]] = True
        uncovered = uncovered[~covered[uncovered]]
    raise ValueError(f"could not draw {n_trials} distinct trials over {len(files)} files")


def write_trials(path: str, trials: np.ndarray, relpaths: list[str]) -> None:
    atomic_write_text(path, "".join(f"{label} {relpaths[a]} {relpaths[b]}\n"
                                    for label, a, b in trials))


def pick_trial_files(n_files: int, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n_files`` of the candidates at random, sorted."""
    chosen = rng.choice(candidates, size=min(n_files, len(candidates)), replace=False)
    return np.sort(chosen)


# --------------------------------------------------------------------------- the build
def build(root: str = DEFAULT_ROOT, scale: float = 1.0, seed: int = 0, m4a: bool = True,
          progress: bool = True, log=print, pool_speakers: int = POOL_SPEAKERS) -> dict:
    """Build (or reuse) the layouts of ``scale`` under ``root``; returns the marker's contents
    (counts, build seconds; :func:`paths` says where the lists and trees are).
    ``pool_speakers`` x 10 clips make the audio pool (fewer only for tests)."""
    sizes = Sizes.at(scale)
    out = layout_dir(root, scale)
    marker = os.path.join(out, MARKER)
    settings = {"version": LAYOUT_VERSION, "seed": seed, "m4a": m4a, "sizes": asdict(sizes)}
    if pool_speakers != POOL_SPEAKERS:
        settings["pool_speakers"] = pool_speakers
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            done = json.load(f)
        if done.get("settings") == json.loads(json.dumps(settings)):
            done["reused"] = True
            return done
        older = {**done.get("settings", {}), "version": LAYOUT_VERSION}
        if older == json.loads(json.dumps(settings)):
            log(f"{out}: layout of an older version; rebuilding the lists (links are reused)")
            os.unlink(marker)
            return build(root, scale, seed, m4a, progress, log, pool_speakers)
        raise SystemExit(f"{out} holds a layout built with other settings; remove it or use "
                         "another --root")
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    wavs, m4as = build_pool(root, pool_speakers, progress=progress)
    pool_seconds = time.perf_counter() - started
    rng = np.random.default_rng(seed)
    info = {"settings": settings, "root": out, "pool_wav": len(wavs), "pool_m4a": len(m4as),
            "pool_seconds": round(pool_seconds, 1)}

    # VoxCeleb2 dev
    t = time.perf_counter()
    vox2 = plan_dataset([f"id{1 + i:05d}" for i in range(sizes.vox2_speakers)],
                        sizes.vox2_clips, sizes.vox2_videos, 2 * sizes.small_per_speaker, rng)
    lines = [f"{speaker} {rel}" for speaker, rels in vox2 for rel in rels]
    small = [f"{speaker} {rel}" for speaker, rels in vox2 for rel in rels[:sizes.small_per_speaker]]
    vox2_dir = os.path.join(out, "vox2")
    os.makedirs(vox2_dir, exist_ok=True)
    atomic_write_text(os.path.join(vox2_dir, "train_list.txt"), "\n".join(lines) + "\n")
    atomic_write_text(os.path.join(vox2_dir, "train_list_10.txt"), "\n".join(small) + "\n")
    relpaths = [line.split(" ", 1)[1] for line in lines]
    info["vox2"] = {"lines": len(lines), "small_lines": len(small), "speakers": len(vox2),
                    "videos": len({rel.rsplit("/", 1)[0] for rel in relpaths}),
                    "plan_seconds": round(time.perf_counter() - t, 1)}
    log(f"vox2: {len(lines):,} clips of {len(vox2):,} speakers; linking ...")
    t = time.perf_counter()
    made = link_tree(os.path.join(vox2_dir, "wav"), relpaths, wavs)
    info["vox2"]["wav_links_made"] = made
    info["vox2"]["wav_link_seconds"] = round(time.perf_counter() - t, 1)
    log(f"vox2 wav: {made:,} links in {info['vox2']['wav_link_seconds']} s")
    if m4a:
        t = time.perf_counter()
        made = link_tree(os.path.join(vox2_dir, "m4a"), relpaths, m4as, suffix=".m4a")
        info["vox2"]["m4a_links_made"] = made
        info["vox2"]["m4a_link_seconds"] = round(time.perf_counter() - t, 1)
        log(f"vox2 m4a: {made:,} links in {info['vox2']['m4a_link_seconds']} s")

    # VoxCeleb1: dev speakers then the test speakers (their clips counted separately)
    t = time.perf_counter()
    n_test, n_dev = sizes.vox1_test_speakers, sizes.vox1_speakers - sizes.vox1_test_speakers
    ids = [f"id{10001 + i:05d}" for i in range(sizes.vox1_speakers)]
    video_share = sizes.vox1_videos * sizes.vox1_test_clips // sizes.vox1_clips
    dev = plan_dataset(ids[:n_dev], sizes.vox1_clips - sizes.vox1_test_clips,
                       sizes.vox1_videos - video_share, 20, rng)
    test = plan_dataset(ids[n_dev:], sizes.vox1_test_clips, max(video_share, n_test), 20, rng)
    vox1_rel = [rel for _, rels in dev + test for rel in rels]
    vox1_spk = np.array([i for i, (_, rels) in enumerate(dev + test) for _ in rels])
    is_test = vox1_spk >= n_dev
    vox1_dir = os.path.join(out, "vox1")
    made = link_tree(os.path.join(vox1_dir, "wav"), vox1_rel, wavs, offset=1)
    info["vox1"] = {"files": len(vox1_rel), "speakers": len(dev) + len(test),
                    "test_files": int(is_test.sum()), "links_made": made,
                    "link_seconds": round(time.perf_counter() - t, 1), "trials": {}}
    log(f"vox1: {len(vox1_rel):,} links in {info['vox1']['link_seconds']} s")
    for name, n_trials, n_files, test_only in sizes.trials:
        t = time.perf_counter()
        candidates = np.flatnonzero(is_test) if test_only else np.arange(len(vox1_rel))
        files = pick_trial_files(n_files, candidates, rng)
        trials = make_trials(files, vox1_spk, n_trials, rng)
        write_trials(os.path.join(vox1_dir, name), trials, vox1_rel)
        info["vox1"]["trials"][name] = {
            "trials": len(trials), "targets": int(trials[:, 0].sum()),
            "files": len(np.union1d(trials[:, 1], trials[:, 2])),
            "seconds": round(time.perf_counter() - t, 1)}
        log(f"vox1 {name}: {len(trials):,} trials over {info['vox1']['trials'][name]['files']:,} files")
    info["build_seconds"] = round(time.perf_counter() - started, 1)
    info["built_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    atomic_write_text(marker, json.dumps(info, indent=1) + "\n")   # last: the layout is complete
    info["reused"] = False
    return info


def paths(root: str, scale: float) -> dict:
    """Where the lists and trees of a built layout are."""
    out = layout_dir(root, scale)
    return {"vox2_list": os.path.join(out, "vox2", "train_list.txt"),
            "vox2_small_list": os.path.join(out, "vox2", "train_list_10.txt"),
            "vox2_wav": os.path.join(out, "vox2", "wav"),
            "vox2_m4a": os.path.join(out, "vox2", "m4a"),
            "vox1_wav": os.path.join(out, "vox1", "wav"),
            "trial_O": os.path.join(out, "vox1", "veri_test.txt"),
            "trial_E": os.path.join(out, "vox1", "list_test_all.txt"),
            "trial_H": os.path.join(out, "vox1", "list_test_hard.txt"), "out": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=DEFAULT_ROOT, help="folder of the layouts (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=1.0, help="size factor (default: 1 = VoxCeleb)")
    parser.add_argument("--no_m4a", action="store_true", help="skip the .m4a tree of VoxCeleb2")
    args = parser.parse_args()
    info = build(args.root, args.scale, m4a=not args.no_m4a)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
