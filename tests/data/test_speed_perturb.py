"""--speed_perturb: each utterance also serves at 0.9x and 1.1x speed as new speakers
(WeSpeaker's recipe), so the speaker count triples, and a renamed speaker's crops are read
longer (0.9x) or shorter (1.1x) and played at their speed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from capsv.audio import crop_samples, load_random_crop
from capsv.cli import main as cli_main
from capsv.data.dataset import TrainCrops, TrainList
from capsv.data.speed import SPEEDS, speed_perturb
from capsv.models.checkpoint import read_checkpoint
from capsv.train import TrainError, train

from speech_like import make_corpus, write_train_list


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    write_train_list(str(root / "train.txt"),
                     make_corpus(str(root / "wav"), 4, 3, seconds=(0.6, 0.9), seed=7))
    return root


def test_the_train_list_triples_with_new_speakers(corpus):
    plain = TrainList.read(str(corpus / "train.txt"), str(corpus / "wav"))
    tripled = TrainList.read(str(corpus / "train.txt"), str(corpus / "wav"), speeds=SPEEDS)
    assert SPEEDS == (0.9, 1.1)
    assert tripled.n_speakers == 3 * plain.n_speakers == 12
    assert len(tripled.paths) == 3 * len(plain.paths)
    assert sorted(tripled.speeds.tolist()) == sorted([1.0] * 4 + [0.9] * 4 + [1.1] * 4)
    for name, speed in zip(tripled.speakers, tripled.speeds):
        assert name.endswith({0.9: "_sp0.9", 1.1: "_sp1.1"}.get(speed, name[-5:]))


def test_a_perturbed_speaker_gets_a_stretched_crop_of_the_same_length(corpus):
    data = TrainList.read(str(corpus / "train.txt"), str(corpus / "wav"), speeds=SPEEDS)
    crops = TrainCrops(data.paths, data.labels, 40, seed=3, speeds=data.speeds)
    plain = TrainCrops(data.paths, data.labels, 40, seed=3)
    length = crop_samples(40)
    for index in range(len(data.paths)):
        speed = float(data.speeds[data.labels[index]])
        crop, label = crops[index]
        assert crop.shape == (length,) and label == data.labels[index]
        if speed == 1.0:
            torch.testing.assert_close(crop, plain[index][0], rtol=0, atol=0)
            continue
        # the same random draw, over the stretch the speed needs, then played at that speed
        rng = np.random.default_rng([3, 0, index])
        frames = -(-(int(np.ceil((length - 1) * speed)) + 1 - crop_samples(0)) // 160)
        expected = speed_perturb(load_random_crop(data.paths[index], frames, rng), speed)[:length]
        np.testing.assert_allclose(crop.numpy(), expected, rtol=0, atol=0)
        assert not torch.allclose(crop, plain[index][0])


def test_training_with_speed_perturb_has_three_times_the_speakers(corpus, tmp_path, capsys):
    torch.set_num_threads(1)
    args = ["train", "--model", "ResNetSE34L", "--encoder_type", "TAP", "--nOut", "16",
            "--trainfunc", "softmax", "--nSpeakers", "1", "--batch_size", "4", "--max_frames",
            "10", "--max_epoch", "1", "--train_list", str(corpus / "train.txt"),
            "--train_path", str(corpus / "wav"), "--nDataLoaderThread", "0", "--no_progress"]
    assert cli_main(args + ["--save_path", str(tmp_path / "plain")]) == 0
    assert cli_main(args + ["--save_path", str(tmp_path / "sp"), "--speed_perturb"]) == 0
    assert "36 utterances of 12 speakers" in capsys.readouterr().out
    plain = read_checkpoint(str(tmp_path / "plain/model/model000000001.model"))
    sp = read_checkpoint(str(tmp_path / "sp/model/model000000001.model"))
    assert plain["meta"]["n_train_speakers"] == 4 and sp["meta"]["n_train_speakers"] == 12
    assert sp["loss"]["main.fc.weight"].shape[0] == 12             # the softmax sees 12 classes
    with pytest.raises(TrainError, match="speed_perturb"):    # a run cannot change its speakers
        train(_config(args, tmp_path / "sp", max_epoch=2))


def _config(argv: list[str], save, **overrides) -> dict:
    """The CLI flags above as a train() config (without --speed_perturb)."""
    values, key = {}, None
    for token in argv[1:]:
        if token.startswith("--"):
            key = token[2:]
            values[key] = True
        else:
            values[key] = token
    types = {"nOut": int, "nSpeakers": int, "batch_size": int, "max_frames": int,
             "max_epoch": int, "nDataLoaderThread": int}
    config = {k: types.get(k, lambda v: v)(v) for k, v in values.items()}
    return {**config, "save_path": str(save), **overrides}
