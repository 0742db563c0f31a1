from __future__ import annotations

import os
import pickle
import sys
import time
import types

import numpy as np
import pytest
import soundfile as sf
import torch

from capsv.audio import AudioError, load_random_crop
from capsv.data import dataset as dataset_module
from capsv.data.dataset import (TrainCrops, TrainDataError, TrainList, build_augmenter,
                                make_train_loader)
from capsv.data.lists import ListError
from capsv.data.sampler import SpeakerBatchSampler

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
from bench_train_input import python_objects  # noqa: E402  (the bench's measure, shared)


@pytest.fixture
def corpus(tmp_path):
    """6 speakers x 4 utterances of distinct random int16 noise, lengths 0.2-1.2 s."""
    rng = np.random.default_rng(0)
    lines = []
    for s in range(6):
        for u in range(4):
            rel = f"id{s:02d}/v/{u}.wav"
            (tmp_path / f"id{s:02d}" / "v").mkdir(parents=True, exist_ok=True)
            n = int(rng.integers(3200, 19200))
            sf.write(tmp_path / rel, rng.integers(-9000, 9000, n).astype(np.int16), 16000,
                     subtype="PCM_16")
            lines.append(f"id{s:02d} {rel}")
    # Speakers listed out of order: indices must follow the sorted names.
    lines = lines[4:] + lines[:4]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_train_list_indexes_sorted_speakers(corpus):
    tl = TrainList.read(str(corpus / "train.txt"), str(corpus))
    assert tl.speakers == [f"id{s:02d}" for s in range(6)] and tl.n_speakers == 6
    assert tl.labels[:4].tolist() == [1, 1, 1, 1] and tl.labels[-4:].tolist() == [0, 0, 0, 0]
    assert tl.paths[0] == str(corpus / "id01/v/0.wav")
    assert len(tl.sha256()) == 64


def test_every_missing_file_is_listed_before_training(corpus):
    text = (corpus / "train.txt").read_text()
    text += "id09 nowhere/a.wav\nid09 nowhere/b.wav\n"
    (corpus / "train.txt").write_text(text)
    with pytest.raises(TrainDataError) as err:
        TrainList.read(str(corpus / "train.txt"), str(corpus))
    message = str(err.value)
    assert "2 of 26 files in" in message and "nowhere/a.wav" in message and "nowhere/b.wav" in message
    assert "--train_path" in message


def test_malformed_line_names_file_and_line(corpus):
    (corpus / "train.txt").write_text("id00 id00/v/0.wav\nid00 id00/v/1.wav extra\n")
    with pytest.raises(ListError, match=r"train.txt:2: expected 2 fields"):
        TrainList.read(str(corpus / "train.txt"), str(corpus))


def test_listed_wav_is_read_from_its_m4a_twin(corpus):
    wav = corpus / "id00/v/0.wav"
    wav.rename(corpus / "id00/v/0.m4a")       # stands in for VoxCeleb2's AAC files
    tl = TrainList.read(str(corpus / "train.txt"), str(corpus))
    assert tl.substituted_m4a == 1
    assert str(corpus / "id00/v/0.m4a") in tl.paths


def _batches(corpus, workers: int, epoch: int):
    tl = TrainList.read(str(corpus / "train.txt"), str(corpus))
    sampler = SpeakerBatchSampler(tl.labels, batch_size=3, nSpeakers=2, seed=4)
    dataset = TrainCrops(tl.paths, tl.labels, max_frames=30, seed=4)
    loader = make_train_loader(dataset, sampler, workers)
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    return [(w.clone(), l.clone()) for w, l, _bad in loader]


def test_loader_batches_are_reproducible_and_independent_of_workers(corpus):
    in_process = _batches(corpus, 0, epoch=1)
    with_workers = _batches(corpus, 2, epoch=1)
    assert len(in_process) == len(with_workers) == 4           # 24 utterances / (3 x 2)
    for (wa, la), (wb, lb) in zip(in_process, with_workers):
        assert wa.shape == (6, 30 * 160 + 240) and wa.dtype == torch.float32
        assert torch.equal(wa, wb) and torch.equal(la, lb)
        assert torch.equal(la[:3], la[3:])                     # utterance-major: same speakers
        assert wa.abs().max() > 1000                           # int16 scale
    other_epoch = _batches(corpus, 0, epoch=2)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(in_process, other_epoch))


def test_augment_hook_is_called_with_the_crop_rng(corpus, monkeypatch):
    calls = []

    class Augmenter:                     # stands in for capsv.data.augment (written elsewhere)
        def __init__(self, musan_path, rir_path):
            self.paths = (musan_path, rir_path)

        def __call__(self, audio, rng):
            calls.append(isinstance(rng, np.random.Generator))
            return audio * 0 + 7

    module = types.ModuleType("capsv.data.augment")
    module.Augmenter = Augmenter
    monkeypatch.setitem(sys.modules, "capsv.data.augment", module)
    aug = build_augmenter("/musan", "/rirs")
    assert aug.paths == ("/musan", "/rirs")
    tl = TrainList.read(str(corpus / "train.txt"), str(corpus))
    crop, label = TrainCrops(tl.paths, tl.labels, 20, augment=aug)[5]
    assert calls == [True] and (crop == 7).all() and label == tl.labels[5]


def test_augment_without_the_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "capsv.data.augment", None)    # import raises ImportError
    with pytest.raises(TrainDataError, match="--augment needs the module capsv.data.augment"):
        build_augmenter("/musan", "/rirs")


# --- issue 14: training input independent of the list size -------------------------------

def _reference_crop(paths, labels, max_frames, seed, epoch, index):
    """TrainCrops' crop and bad files as computed before issue 14 (a scan of every label for
    the speaker's utterances): the indexed version must return exactly these."""
    rng = np.random.default_rng([seed, epoch, index])
    same = [i for i, label in enumerate(labels) if label == labels[index]]
    start = same.index(index)
    bad = []
    for other in same[start:] + same[:start]:
        try:
            return load_random_crop(paths[other], max_frames, rng), bad
        except AudioError as exc:
            bad.append((paths[other], str(exc)))
    return None, bad


def test_crops_and_skip_order_are_those_of_the_list_scan(corpus):
    # Shuffled list (a speaker's utterances are scattered), and three of id02's four files
    # unreadable: the fallback must visit them in list order from the item on, wrapping round.
    lines = (corpus / "train.txt").read_text().split()
    pairs = [f"{s} {p}" for s, p in zip(lines[::2], lines[1::2])]
    order = np.random.default_rng(3).permutation(len(pairs))
    (corpus / "train.txt").write_text("\n".join(pairs[i] for i in order) + "\n")
    for u in (0, 1, 3):
        (corpus / f"id02/v/{u}.wav").write_bytes(b"RIFF....not a wave file")
    tl = TrainList.read(str(corpus / "train.txt"), str(corpus))
    paths, labels = list(tl.paths), tl.labels.tolist()
    crops = TrainCrops(paths, labels, max_frames=20, seed=5, on_bad_audio="skip")
    crops.set_epoch(2)
    skipped = 0
    for index in range(len(paths)):
        want, want_bad = _reference_crop(paths, labels, 20, 5, 2, index)
        crop, label, bad = crops._item(index)
        assert torch.equal(crop, torch.from_numpy(want.astype(np.float32))) and bad == want_bad
        assert label == labels[index]
        skipped += len(bad)
    assert skipped == 0 + 1 + 2 + 3       # id02: 0..3 bad files before its good one, per item


def _time_per_item(crops, indices) -> float:
    start = time.perf_counter()
    for index in indices:
        crops[index]
    return (time.perf_counter() - start) / len(indices)


def test_per_item_cost_does_not_depend_on_the_list_size(monkeypatch):
    # 200,000 and 2,000 utterances of the same 1,000 speakers; the audio read is replaced by
    # zeros, so what is timed is finding the item's speaker and its utterances. Before the
    # index each item scanned every label: ~100x slower on the large list.
    monkeypatch.setattr(dataset_module, "load_random_crop",
                        lambda path, max_frames, rng: np.zeros(16, np.float32))
    rng = np.random.default_rng(0)
    sizes = {}
    for n in (2_000, 200_000):
        labels = rng.permutation(np.arange(n) % 1_000).tolist()
        crops = TrainCrops([f"/d/{i}.wav" for i in range(n)], labels, max_frames=20)
        sizes[n] = (crops, rng.integers(0, n, 300).tolist())
    # Interleaved rounds, best of each: a busy neighbour slows both sizes alike. Quiet, the
    # ratio is ~1.0; 4x leaves room for a loaded 2-core machine (seen: 2.2 at load 14).
    rounds = [{n: _time_per_item(*sizes[n]) for n in sizes} for _ in range(7)]
    best = {n: min(r[n] for r in rounds) for n in sizes}
    assert best[200_000] < 4 * best[2_000], best


def test_dataset_objects_do_not_grow_with_the_list(corpus):
    # Same 50 speakers, 10x more utterances: the dataset a worker receives holds as many
    # Python objects (its paths, labels and speaker index are numpy arrays / one byte string).
    counts = {}
    for n in (1_000, 10_000):
        paths = [f"{corpus}/id{i % 50:02d}/v/{i}.wav" for i in range(n)]
        labels = [i % 50 for i in range(n)]
        counts[n] = python_objects(TrainCrops(paths, labels, max_frames=20))
    assert counts[10_000] == counts[1_000] < 500, counts


def test_train_list_is_compact_and_pickles(corpus):
    tl = TrainList.read(str(corpus / "train.txt"), str(corpus))
    assert isinstance(tl.labels, np.ndarray) and tl.labels.dtype == np.int64
    assert python_objects(tl.paths) < 10 and python_objects(tl.labels) < 5
    again = pickle.loads(pickle.dumps(tl.paths))
    assert list(again) == list(tl.paths) and len(again) == 24


@pytest.mark.parametrize("paths", [
    ["/a/b.wav", "", "rel/ü ñ.flac", "/x/\udcff\udc80.wav", "/emoji/🎙.wav", "/a/b.wav"],
    ["ascii/only.wav"] * 3,
])
def test_path_array_returns_every_path_unchanged(paths):
    array = dataset_module.PathArray.from_strings(paths)
    assert len(array) == len(paths) and list(array) == paths
    assert array[-1] == paths[-1] and array[1:3] == paths[1:3] and array[::-2] == paths[::-2]
    assert paths[0] in array and "/nowhere.wav" not in array
    with pytest.raises(IndexError):
        array[len(paths)]


@pytest.mark.parametrize("root", ["", "/", "/data", "/data/", "rel/dir", "rel//"])
def test_paths_are_joined_like_os_path_join(root):
    relpaths = ["id1/v/0.wav", "/abs/x.wav", "a//b.wav", "./c.wav", "../d.wav"]
    assert dataset_module._join_all(root, relpaths) == [os.path.join(root, r) for r in relpaths]


def _resolve_with_isfile(paths):
    """The file check as it was before issue 14: one os.path.isfile per file (and twin)."""
    resolved, missing = [], []
    for path in paths:
        twin = os.path.splitext(path)[0] + ".m4a"
        if os.path.isfile(path):
            resolved.append(path)
        elif path.lower().endswith(".wav") and os.path.isfile(twin):
            resolved.append(twin)
        else:
            missing.append(path)
    return resolved, missing


def test_folder_listings_find_the_same_files_as_isfile(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "real.wav").write_bytes(b"x")
    (tmp_path / "a" / "aac.m4a").write_bytes(b"x")                 # listed as aac.wav
    (tmp_path / "a" / "UPPER.m4a").write_bytes(b"x")               # listed as UPPER.WAV
    (tmp_path / "a" / "folder.wav").mkdir()                        # a folder is not a file
    (tmp_path / "a" / "link.wav").symlink_to(tmp_path / "a" / "real.wav")
    (tmp_path / "a" / "dangling.wav").symlink_to(tmp_path / "nowhere.wav")
    (tmp_path / "a" / "both.wav").symlink_to(tmp_path / "a" / "real.wav")  # a link wins over
    (tmp_path / "a" / "both.m4a").write_bytes(b"x")                        # its .m4a twin
    (tmp_path / "linked").symlink_to(tmp_path / "a")               # a linked folder
    (tmp_path / "top.wav").write_bytes(b"x")
    names = ["real.wav", "aac.wav", "UPPER.WAV", "folder.wav", "link.wav", "dangling.wav",
             "both.wav", "gone.wav", "gone.flac"]
    paths = ([str(tmp_path / "a" / n) for n in names] + [str(tmp_path / "linked" / "aac.wav")]
             + [str(tmp_path / "top.wav"), str(tmp_path / "a" / "real.wav" / "x.wav"),
                str(tmp_path / "missing" / "x.wav"), str(tmp_path / "a") + "/"])
    want, missing = _resolve_with_isfile(paths)
    assert len(want) == 7 and len(missing) == 7         # the cases above, per os.path.isfile
    with pytest.raises(TrainDataError) as err:
        dataset_module._resolve_files("list.txt", str(tmp_path), paths)
    assert f"{len(missing)} of {len(paths)} files" in str(err.value)
    assert all(path in str(err.value) for path in missing)
    found = [p for p in paths if p not in missing]
    assert dataset_module._resolve_files("list.txt", str(tmp_path), found) == (want, 3)
    # A folder that cannot be listed: os.path.isfile decides, same answer.
    monkeypatch.setattr(dataset_module.os, "scandir", _refuse)
    assert dataset_module._resolve_files("list.txt", str(tmp_path), found) == (want, 3)


def test_a_tree_of_links_is_checked_with_isfile_alone(tmp_path):
    # Listing a folder of links saves no stat; past 1,000 links the listings stop, same answers.
    (tmp_path / "links").mkdir()
    (tmp_path / "later").mkdir()
    target = tmp_path / "target.wav"
    target.write_bytes(b"x")
    for n in range(1_100):
        (tmp_path / "links" / f"{n}.wav").symlink_to(target)
    (tmp_path / "later" / "twin.m4a").write_bytes(b"x")
    paths = [str(tmp_path / "links" / f"{n}.wav") for n in range(1_100)]
    paths += [str(tmp_path / "later" / "twin.wav"), str(target)]
    listed = dataset_module._FolderListings()
    assert all(listed.is_file(p) for p in paths[:1_100])
    assert not listed.is_file(paths[-2]) and listed.is_file(paths[-1])
    assert str(tmp_path / "later") + "/" not in listed._listings      # no longer listing
    assert dataset_module._resolve_files("list.txt", str(tmp_path), paths) == (
        _resolve_with_isfile(paths)[0], 1)


def _refuse(path):
    raise PermissionError(13, "Permission denied", path)
