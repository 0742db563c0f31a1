from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch

from capsv.data.dataset import (TrainCrops, TrainDataError, TrainList, build_augmenter,
                                make_train_loader)
from capsv.data.lists import ListError
from capsv.data.sampler import SpeakerBatchSampler


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
    assert tl.labels[:4] == [1, 1, 1, 1] and tl.labels[-4:] == [0, 0, 0, 0]
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
