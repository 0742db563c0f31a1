"""VoxCeleb preparation: download, join, extract, convert, lists.

Folder layout under ``--save_path`` (the seed README's paths)::

    <save_path>/vox1_dev_wav_partaa ...    downloads (and the joined zips)
    <save_path>/voxceleb/voxceleb1/idXXXXX/<video>/<clip>.wav   VoxCeleb1 dev + test
    <save_path>/voxceleb/voxceleb2/idXXXXX/<video>/<clip>.m4a|.wav   VoxCeleb2 dev
    <save_path>/voxceleb/voxceleb2_test/...                      VoxCeleb2 test
    <save_path>/train_list.txt, veri_test.txt, ...               lists
    <save_path>/.capsv/                                          verified / extracted markers

Every step is resumable and skips what a previous run finished.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field

from tqdm import tqdm

from ..errors import CapsvError, os_error_message
from ..utils import atomic_write_text
from .archive import concatenate, extract_archive
from .convert import ConvertReport, convert_tree
from .download import (STATE_DIR, Credentials, Downloader, RemoteFile, file_md5, is_verified,
                       mark_verified, set_aside)
from ..data.lists import ListError, missing_files, read_trials

# The paper's README fetched the parts from the Oxford VGG site with basic auth. The host has
# moved since (KAIST mirror, then access-key URLs): pass --base_url for the current one.
DEFAULT_BASE_URL = "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1a"
DEFAULT_META_URL = "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/meta"

# Download parts, and (lines whose name is <prefix>.zip of a set of <prefix>_partXX files)
# the md5 of the joined archive.
VOXCELEB_FILES = [RemoteFile(name, md5) for name, md5 in [
    ("vox1_dev_wav_partaa", "e395d020928bc15670b570a21695ed96"),
    ("vox1_dev_wav_partab", "bbfaaccefab65d82b21903e81a8a8020"),
    ("vox1_dev_wav_partac", "017d579a2a96a077f40042ec33e51512"),
    ("vox1_dev_wav_partad", "7bb1e9f70fddc7a678fa998ea8b3ba19"),
    ("vox1_test_wav.zip", "185fdc63c3c739954633d50379a3d102"),
    ("vox2_dev_aac_partaa", "da070494c573e5c0564b1d11c3b20577"),
    ("vox2_dev_aac_partab", "17fe6dab2b32b48abaf1676429cdd06f"),
    ("vox2_dev_aac_partac", "1de58e086c5edf63625af1cb6d831528"),
    ("vox2_dev_aac_partad", "5a043eb03e15c5a918ee6a52aad477f9"),
    ("vox2_dev_aac_partae", "cea401b624983e2d0b2a87fb5d59aa60"),
    ("vox2_dev_aac_partaf", "fc886d9ba90ab88e7880ee98effd6ae9"),
    ("vox2_dev_aac_partag", "d160ecc3f6ee3eed54d55349531cb42e"),
    ("vox2_dev_aac_partah", "6b84a81b9af72a9d9eecbb3b1f602e65"),
    ("vox2_test_aac.zip", "0d2b3ea430a821c33263b5ea37ede312"),
    ("vox1_dev_wav.zip", "ae63e55b951748cc486645f532ba230b"),
    ("vox2_dev_aac.zip", "bbc063c46078a602ca71605645c2a402"),
]]

# Archive folder prefix -> dataset folder (longest prefixes first).
LAYOUT = [("dev/aac/", "voxceleb2"), ("dev/wav/", "voxceleb1"), ("aac/", "voxceleb2_test"),
          ("wav/", "voxceleb1")]

# Published trial lists and their sizes (VoxCeleb1 O, E, H and the cleaned versions).
TRIAL_LISTS = {
    "veri_test.txt": 37_720, "veri_test2.txt": 37_611,
    "list_test_all.txt": 581_480, "list_test_all2.txt": 579_818,
    "list_test_hard.txt": 552_536, "list_test_hard2.txt": 550_894,
}
DEFAULT_TRIAL_LISTS = ["veri_test.txt", "veri_test2.txt"]

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


class PrepareError(CapsvError):
    pass


def say(text: str) -> None:
    tqdm.write(text, file=sys.stderr)


# -- what to fetch, join and extract -------------------------------------------------------

@dataclass
class Join:
    """``target`` is made by concatenating ``parts`` (file names, in order)."""
    target: RemoteFile
    parts: list[str] = field(default_factory=list)


@dataclass
class Plan:
    downloads: list[RemoteFile]
    joins: list[Join]

    @property
    def archives(self) -> list[str]:
        """Archive names to extract: downloaded archives, then joined ones."""
        names = [f.name for f in self.downloads if f.name.endswith(ARCHIVE_SUFFIXES)]
        return names + [j.target.name for j in self.joins]


SUBSETS = ("vox1_dev", "vox1_test", "vox2_dev", "vox2_test")


def select_subsets(files: list[RemoteFile], subsets: list[str]) -> list[RemoteFile]:
    """The table entries whose name starts with one of ``subsets`` (e.g. ``vox2_dev``)."""
    chosen = [f for f in files if f.name.startswith(tuple(subsets))]
    if not chosen:
        raise PrepareError(f"no file in the parts table belongs to {', '.join(subsets)}")
    return chosen


def make_plan(files: list[RemoteFile]) -> Plan:
    """Split a parts table into downloads and joins.

    ``<prefix>_partXX`` files are joined into ``<prefix>.zip``; a table entry named
    ``<prefix>.zip`` gives the joined file's md5 and is not downloaded.
    """
    joins: dict[str, Join] = {}
    for f in files:
        match = re.fullmatch(r"(.+)_part[a-z]{2}", f.name)
        if match:
            target = match.group(1) + ".zip"
            joins.setdefault(target, Join(RemoteFile(target))).parts.append(f.name)
    downloads = []
    for f in files:
        if f.name in joins:
            joins[f.name].target = f
        else:
            downloads.append(f)
    for join in joins.values():
        join.parts.sort()
    return Plan(downloads, list(joins.values()))


# -- steps -----------------------------------------------------------------------------------

def download(plan: Plan, save_path: str, base_url: str | None, credentials: Credentials,
             jobs: int = 4, progress: bool = True, retries: int = 3) -> None:
    """Fetch the plan's files, except those whose archive is already joined or extracted."""
    done = {p for j in plan.joins if _join_finished(save_path, j) for p in j.parts}
    done |= {f.name for f in plan.downloads if _extracted_marker_exists(save_path, f.name)}
    todo = [f for f in plan.downloads if f.name not in done]
    if done:
        say(f"download: {len(done)} files skipped, their archives are already joined or extracted")
    downloader = Downloader(save_path, base_url, credentials, jobs=jobs, progress=progress,
                            retries=retries)
    downloader.fetch_all(todo)


def _join_finished(save_path: str, join: Join) -> bool:
    return is_verified(save_path, join.target) or _extracted_marker_exists(save_path, join.target.name)


def join_parts(plan: Plan, save_path: str, progress: bool = True) -> int:
    """Concatenate split parts into their archives, verifying md5s; return the joins that are
    done (now or before). Joins with none of their parts present are skipped; with some
    missing, it is an error."""
    done = 0
    for join in plan.joins:
        target = os.path.join(save_path, join.target.name)
        if _done_join(save_path, join, target):
            done += 1
            continue
        paths = [os.path.join(save_path, p) for p in join.parts]
        missing = [p for p in join.parts if not os.path.isfile(os.path.join(save_path, p))]
        if len(missing) == len(paths):
            continue
        if missing:
            raise PrepareError(f"cannot build {join.target.name}: missing "
                               f"{', '.join(missing)} in {save_path}; run with --download first")
        _check_parts(plan, save_path, join)
        md5 = concatenate(paths, target, join.target.md5, progress)
        mark_verified(save_path, join.target.name, md5)
        say(f"{join.target.name}: joined from {len(paths)} parts"
            + (", md5 verified" if join.target.md5 else " (no md5 listed for the joined file)"))
        done += 1
    return done


def _done_join(save_path: str, join: Join, target: str) -> bool:
    if _join_finished(save_path, join):
        return True
    if os.path.isfile(target) and join.target.md5:  # joined by hand or by an older run
        say(f"{join.target.name}: found without a verification record; checking its md5")
        if file_md5(target) == join.target.md5:
            mark_verified(save_path, join.target.name, join.target.md5)
            return True
        say(f"{join.target.name}: present but its md5 is wrong; moved aside to {set_aside(target)}")
    return False


def _check_parts(plan: Plan, save_path: str, join: Join) -> None:
    """Each part must match its md5 (parts fetched by hand are checked now)."""
    table = {f.name: f for f in plan.downloads}
    for name in join.parts:
        item = table.get(name, RemoteFile(name))
        if is_verified(save_path, item):
            continue
        actual = file_md5(os.path.join(save_path, name))
        if item.md5 is not None and actual != item.md5:
            bad = set_aside(os.path.join(save_path, name))
            raise PrepareError(f"{name}: md5 is {actual}, expected {item.md5}; moved aside to "
                               f"{bad}. Run with --download to fetch it again")
        mark_verified(save_path, name, actual)


def _extracted_marker(save_path: str, archive: str) -> str:
    return os.path.join(save_path, STATE_DIR, "extracted", archive)


def _extracted_marker_exists(save_path: str, archive: str) -> bool:
    return os.path.isfile(_extracted_marker(save_path, archive))


def voxceleb_route(name: str) -> str | None:
    """Archive entry -> path under the dataset folder (``wav/id1/...`` -> ``voxceleb1/id1/...``)."""
    for prefix, folder in LAYOUT:
        if name.startswith(prefix) and len(name) > len(prefix):
            return folder + "/" + name[len(prefix):]
    return None


def extract(plan: Plan, save_path: str, dataset_dir: str, progress: bool = True) -> None:
    """Join what needs joining, then extract every archive present (skips finished ones)."""
    join_parts(plan, save_path, progress)
    found = 0
    for name in plan.archives:
        archive = os.path.join(save_path, name)
        marker = _extracted_marker(save_path, name)
        if os.path.isfile(marker):
            say(f"{name}: already extracted, skipped")
            found += 1
            continue
        if not os.path.isfile(archive):
            continue
        found += 1
        written, present = extract_archive(archive, dataset_dir, voxceleb_route, progress)
        if written + present == 0:
            raise PrepareError(f"{archive}: no entry is under "
                               f"{', '.join(p for p, _ in LAYOUT)}; is it a VoxCeleb archive?")
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w", encoding="utf-8") as f:
            f.write(f"{os.path.getsize(archive)}\n")
        say(f"{name}: extracted {written} files into {dataset_dir}"
            + (f" ({present} were already there)" if present else ""))
    if not found:
        raise PrepareError(f"no archives to extract in {save_path} (expected "
                           f"{', '.join(plan.archives)}); run with --download first")


def convert(dataset_dir: str, save_path: str, workers: int, progress: bool = True) -> ConvertReport:
    """Convert the VoxCeleb2 ``.m4a`` files to WAV; failures go to conversion_failures.txt."""
    roots = [os.path.join(dataset_dir, d) for d in ("voxceleb2", "voxceleb2_test")]
    if not any(os.path.isdir(r) for r in roots):
        raise PrepareError(f"no VoxCeleb2 folder in {dataset_dir}; run with --extract first")
    report = convert_tree(roots, workers, progress, failures_path=failures_file(save_path))
    say(f"convert: {report.converted} converted, {report.skipped} already done, "
        f"{len(report.failures)} failed")
    return report


def failures_file(save_path: str) -> str:
    return os.path.join(save_path, "conversion_failures.txt")


# -- lists -----------------------------------------------------------------------------------

def scan_clips(root: str, extension: str) -> tuple[list[tuple[str, str]], int]:
    """(speaker, ``speaker/video/clip<ext>``) for each clip three levels below ``root``, sorted;
    and the number of ``extension`` files found at other depths (ignored)."""
    try:
        return _scan_clips(root, extension)
    except OSError as exc:              # a symlink loop, an unreadable folder
        raise PrepareError(f"cannot list the clips under {root}: "
                           f"{os_error_message(exc)}") from None


def _scan_clips(root: str, extension: str) -> tuple[list[tuple[str, str]], int]:
    def entries(path):
        with os.scandir(path) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)

    items, elsewhere = [], 0
    for speaker in entries(root):
        if not speaker.is_dir():
            elsewhere += speaker.name.lower().endswith(extension)
            continue
        for video in entries(speaker.path):
            if not video.is_dir():
                elsewhere += video.name.lower().endswith(extension)
                continue
            for clip in entries(video.path):
                if clip.name.lower().endswith(extension):
                    if clip.is_file():
                        items.append((speaker.name, f"{speaker.name}/{video.name}/{clip.name}"))
                    else:
                        elsewhere += 1
    return items, elsewhere


def write_train_list(root: str, out_path: str, extension: str = "auto") -> tuple[int, int, str]:
    """Write ``<speaker> <speaker>/<video>/<clip>`` for a ``speaker/video/clip`` tree.

    ``extension`` "auto" lists WAV files when there are any, else ``.m4a``. Returns
    (lines, speakers, extension used).
    """
    if not os.path.isdir(root):
        raise PrepareError(f"{root}: folder not found; run with --extract (and --convert) first, "
                           "or point --train_root at a speaker/video/clip tree")
    extensions = [".wav", ".m4a"] if extension == "auto" else ["." + extension.lstrip(".")]
    for ext in extensions:
        items, elsewhere = scan_clips(root, ext)
        if items:
            break
    if not items:
        raise PrepareError(f"{root}: no {' or '.join(extensions)} files at <speaker>/<video>/<clip> depth")
    if elsewhere:
        say(f"train list: {elsewhere} {ext} files in {root} are not at <speaker>/<video>/<clip> "
            "depth and were left out")
    if ext == ".wav":
        unconverted = len(scan_clips(root, ".m4a")[0]) - len(items)
        if unconverted > 0:
            say(f"train list: {unconverted} .m4a clips have no .wav yet (conversion not run or "
                "failed: see conversion_failures.txt) and are not listed")
    write_text_atomic(out_path, "".join(f"{spk} {path}\n" for spk, path in items))
    return len(items), len({spk for spk, _ in items}), ext


def trial_list_names(selection: list[str]) -> list[str]:
    """Expand ``all``/``none`` and check the names against the published lists."""
    if selection in (["none"], []):
        return []
    if selection == ["all"]:
        return list(TRIAL_LISTS)
    unknown = [n for n in selection if n not in TRIAL_LISTS]
    if unknown:
        raise PrepareError(f"unknown trial list(s) {', '.join(unknown)}; choose from "
                           f"{', '.join(TRIAL_LISTS)}, 'all' or 'none'")
    return selection


def fetch_trial_lists(names: list[str], save_path: str, meta_url: str,
                      progress: bool = True) -> list[str]:
    """Download the trial lists not yet in ``save_path``; return all their paths."""
    absent = [RemoteFile(n) for n in names if not os.path.isfile(os.path.join(save_path, n))]
    if absent:
        Downloader(save_path, meta_url, jobs=len(absent), progress=progress).fetch_all(absent)
    return [os.path.join(save_path, n) for n in names]


def check_trial_list(path: str, wav_root: str) -> list[str]:
    """Parse a trial list and return the files it names that are missing under ``wav_root``."""
    try:
        trials = read_trials(path)
    except ListError as exc:
        bad = set_aside(path)
        raise PrepareError(f"{exc} (the file was moved aside to {bad}; if it is a web page, the "
                           "--meta_url is wrong: fix it, or put the list there yourself)") from None
    name = os.path.basename(path)
    expected = TRIAL_LISTS.get(name)
    if expected is not None and len(trials) != expected:
        say(f"{name}: {len(trials)} trials, but the published list has {expected}")
    files = sorted({t.path1 for t in trials} | {t.path2 for t in trials})
    return missing_files(wav_root, files)


def write_text_atomic(path: str, text: str) -> None:
    atomic_write_text(path, text)      # names the file if the disk is full; no .tmp left over
