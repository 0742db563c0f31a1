"""The scale harness's layout builder (bench/scale/layout.py) at a tiny scale factor: the
lists have the scaled VoxCeleb sizes and formats, capsv's own readers accept them, every
listed file exists (wav, and m4a beside it), and a second build reuses the first."""
from __future__ import annotations

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench", "scale"))

import layout  # noqa: E402

from capsv.data.dataset import TrainList
from capsv.data.lists import read_trials, trial_files

SCALE = 0.005
TRAIN_LINE = re.compile(r"^(id\d{5}) \1/[A-Za-z0-9_-]{11}/\d{5}\.wav$")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("scale"))
    info = layout.build(root, SCALE, progress=False, log=lambda *_: None, pool_speakers=2)
    return root, info, layout.paths(root, SCALE), layout.Sizes.at(SCALE)


def read_lines(path):
    with open(path) as f:
        return f.read().splitlines()


def test_train_lists_have_the_scaled_sizes_and_format(built):
    _, _, where, sizes = built
    lines = read_lines(where["vox2_list"])
    small = read_lines(where["vox2_small_list"])
    assert len(lines) == sizes.vox2_clips == round(1_092_009 * SCALE)
    assert all(TRAIN_LINE.match(line) for line in lines)
    speakers = {line.split()[0] for line in lines}
    assert len(speakers) == sizes.vox2_speakers == round(5_994 * SCALE)
    assert len(small) == 10 * len(speakers) and {s.split()[0] for s in small} == speakers
    videos = {line.split()[1].rsplit("/", 1)[0] for line in lines}
    assert abs(len(videos) - sizes.vox2_videos) <= 0.05 * sizes.vox2_videos
    wav = TrainList.read(where["vox2_list"], where["vox2_wav"])
    assert len(wav.paths) == len(lines) and wav.substituted_m4a == 0
    m4a = TrainList.read(where["vox2_list"], where["vox2_m4a"])
    assert m4a.substituted_m4a == len(lines)


def test_trial_lists_have_the_scaled_sizes(built):
    _, info, where, sizes = built
    for (name, n_trials, n_files, _), key in zip(sizes.trials, ("trial_O", "trial_E", "trial_H")):
        trials = read_trials(where[key])            # also refuses repeated pairs
        assert len(trials) == n_trials
        assert sum(t.label for t in trials) == n_trials // 2
        files = trial_files(trials)
        assert len(files) == n_files
        assert all(os.path.isfile(os.path.join(where["vox1_wav"], f)) for f in files)
        if key == "trial_O":                        # the test speakers only
            test_ids = {f.split("/")[0] for f in files}
            assert len(test_ids) <= sizes.vox1_test_speakers
    assert info["vox1"]["files"] == sizes.vox1_clips


def test_a_second_build_reuses_the_first(built):
    root, info, where, _ = built
    stamp = os.stat(where["vox2_list"]).st_mtime_ns
    again = layout.build(root, SCALE, progress=False, log=lambda *_: None, pool_speakers=2)
    assert again["reused"] and not info["reused"]
    assert os.stat(where["vox2_list"]).st_mtime_ns == stamp
