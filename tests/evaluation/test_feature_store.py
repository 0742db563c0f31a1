"""Disk-backed evaluation features (capsv.evaluation.feature_store): the same scores as in memory, the
TAP one-vector form, and cache folders that are reused only when whole and matching."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from capsv import cli
from capsv.api import SpeakerVerifier
from capsv.models.checkpoint import load_model
from capsv.evaluation.pipeline import ScoreNorm, evaluate_list
from capsv.evaluation.extract import extract_features
from capsv.evaluation.feature_store import IN_MEMORY, MANIFEST, FeatureCacheError, lock_folder

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCES = ["id10001/vidA/00001.wav", "id10002/vidB/00002.wav", "id10003/vidA/00002.wav",
           "id10004/vidA/00001.wav", "id10003/vidC/00003.wav", "id10002/vidA/00001.wav"]
# Short slices of the reference files (0.4 s to 1.3 s), several lengths for whole utterances.
SLICES = [(0, 6800), (4000, 14000), (8000, 9001), (0, 20800), (2000, 11111), (6000, 16000),
          (1000, 12000), (3000, 7000)]
PROTOCOL = dict(eval_frames=40, num_eval=3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, reference_dir):
    """8 short files, a trial list over them (both labels, a file against itself; each pair
    once, in either order: the list reader refuses a swapped repeat) and a cohort list of 4."""
    root = tmp_path_factory.mktemp("corpus")
    names = []
    for k, (start, length) in enumerate(SLICES):
        audio, _ = sf.read(reference_dir / "wav" / SOURCES[k % len(SOURCES)], dtype="int16")
        name = f"spk{k % 3}/u{k}.wav"
        (root / name).parent.mkdir(exist_ok=True)
        sf.write(root / name, audio[start:start + length], 16000, subtype="PCM_16")
        names.append(name)
    rng = np.random.default_rng(0)
    lines = [f"1 {names[0]} {names[3]}", f"1 {names[2]} {names[2]}"]
    seen = {frozenset((0, 3)), frozenset((2,))}
    while len(lines) < 16:
        i, j = (int(k) for k in rng.integers(0, len(names), 2))
        if frozenset((i, j)) not in seen:
            seen.add(frozenset((i, j)))
            lines.append(f"{int(i % 3 == j % 3)} {names[i]} {names[j]}")
    (root / "trials.txt").write_text("\n".join(lines) + "\n")
    (root / "cohort.txt").write_text("\n".join(names[4:]) + "\n")
    return root


def _net(reference_dir, encoder):
    return load_model(str(reference_dir / f"ResNetSE34L_{encoder}.model"), "ResNetSE34L")[0]


def _evaluate(net, corpus, **kw):
    args = {**PROTOCOL, **kw}
    return evaluate_list(net, str(corpus / "trials.txt"), str(corpus), progress=False, **args)


@pytest.mark.parametrize("encoder, eval_frames", [("CAP", 40), ("CAP", 0), ("TAP", 40)])
def test_disk_store_scores_equal_in_memory(reference_dir, corpus, tmp_path, encoder, eval_frames):
    net = _net(reference_dir, encoder)
    memory = _evaluate(net, corpus, eval_frames=eval_frames, eval_cache=IN_MEMORY).scores
    temporary = _evaluate(net, corpus, eval_frames=eval_frames).scores          # the default
    folder = _evaluate(net, corpus, eval_frames=eval_frames, eval_cache=str(tmp_path / "c")).scores
    assert np.ptp(memory) > 1e-4                                   # distinct trials, distinct scores
    np.testing.assert_allclose(temporary, memory, rtol=0, atol=1e-5)
    np.testing.assert_allclose(folder, memory, rtol=0, atol=1e-5)
    assert (tmp_path / "c" / MANIFEST).is_file()
    # the default store leaves nothing behind in the temporary folder
    assert not [n for n in os.listdir(tmp_path) if n.startswith("capsv-eval-")]


def test_default_features_are_memory_maps_not_tensors(reference_dir, corpus):
    net = _net(reference_dir, "CAP")
    paths = [str(corpus / f"spk{k % 3}/u{k}.wav") for k in range(4)]
    feats = extract_features(net, paths, progress=False, cache=None, **PROTOCOL)
    try:
        assert feats.store is not None and feats.frames_store.shape[:2] == (4, 3)
        mapped = feats.store.maps["frames"]
        assert isinstance(mapped, np.memmap) and feats.frames_store.data_ptr() == mapped.ctypes.data
        in_memory = extract_features(net, paths, progress=False, **PROTOCOL)
        torch.testing.assert_close(feats.frames[2], in_memory.frames[2], rtol=0, atol=0)
        torch.testing.assert_close(feats.proj[3], in_memory.proj[3], rtol=0, atol=0)
    finally:
        feats.close()


@pytest.mark.parametrize("encoder", ["CAP", "TAP"])
def test_asnorm_from_disk_equals_in_memory(reference_dir, corpus, encoder):
    net = _net(reference_dir, encoder)
    norm = ScoreNorm(str(corpus / "cohort.txt"), str(corpus), top_n=3)
    memory = _evaluate(net, corpus, score_norm=norm, eval_cache=IN_MEMORY)
    disk = _evaluate(net, corpus, score_norm=norm)
    np.testing.assert_allclose(disk.raw_scores, memory.raw_scores, rtol=0, atol=1e-5)
    # s-norm divides by the cohort's std, magnifying float rounding (test_scorenorm.py)
    np.testing.assert_allclose(disk.scores, memory.scores, rtol=0, atol=1e-3)


def test_tap_one_vector_equals_the_mean_of_crop_cosines(reference_dir, corpus):
    net = _net(reference_dir, "TAP")
    result = _evaluate(net, corpus, num_eval=4)
    sv = SpeakerVerifier(net, eval_frames=40, num_eval=4)
    for trial, score in list(zip(result.trials, result.scores))[:5]:
        a = sv.embed(corpus / trial.path1, crops=True).astype(np.float64)    # (4, E) unit rows
        b = sv.embed(corpus / trial.path2, crops=True).astype(np.float64)
        assert a.shape == (4, 512) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
        assert score == pytest.approx((a @ b.T).mean(), abs=1e-6)           # the 4 x 4 mean
    # evaluation keeps the one (E,) vector per file, not the crops
    paths = [str(corpus / f"spk{k % 3}/u{k}.wav") for k in range(3)]
    feats = extract_features(net, paths, progress=False, keep_crops=False, **PROTOCOL)
    assert not feats.emb and feats.mean_store.shape == (3, 512)


def _stat(folder):
    st = os.stat(folder / "frames.f32")
    return st.st_ino, st.st_mtime_ns, st.st_size


def test_a_valid_cache_is_reused_and_a_changed_model_is_not(reference_dir, corpus, tmp_path, capsys):
    net = _net(reference_dir, "CAP")
    cache = tmp_path / "cache"
    first = _evaluate(net, corpus, eval_cache=str(cache)).scores
    written = _stat(cache)
    capsys.readouterr()
    again = _evaluate(net, corpus, eval_cache=str(cache)).scores
    assert "reusing the features of 8 files" in capsys.readouterr().out
    assert _stat(cache) == written                              # not extracted again
    np.testing.assert_array_equal(again, first)
    with torch.no_grad():                                       # other weights: other features
        net.backbone.conv1.weight.mul_(-1)
    changed = _evaluate(net, corpus, eval_cache=str(cache)).scores
    note = capsys.readouterr().out
    assert "made for other weights; extracting again" in note and len(note.splitlines()) == 1
    np.testing.assert_allclose(changed, _evaluate(net, corpus, eval_cache=IN_MEMORY).scores,
                               rtol=0, atol=1e-5)
    assert np.abs(changed - first).max() > 1e-4
    # another protocol is not these features either
    _evaluate(net, corpus, eval_cache=str(cache), num_eval=2)
    assert "made for other num_eval" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncated array", "edited manifest", "no manifest"])
def test_a_damaged_cache_is_rebuilt_not_trusted(reference_dir, corpus, tmp_path, capsys, damage):
    net = _net(reference_dir, "CAP")
    cache = tmp_path / "cache"
    want = _evaluate(net, corpus, eval_cache=str(cache)).scores
    if damage == "truncated array":
        with open(cache / "proj.f32", "r+b") as f:
            f.truncate(os.path.getsize(cache / "proj.f32") // 2)
    elif damage == "edited manifest":
        manifest = json.loads((cache / MANIFEST).read_text())
        manifest["files"] = "0" * 64
        (cache / MANIFEST).write_text(json.dumps(manifest))
    else:
        (cache / MANIFEST).unlink()
    capsys.readouterr()
    got = _evaluate(net, corpus, eval_cache=str(cache)).scores
    assert "extracting again" in capsys.readouterr().out
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert (cache / MANIFEST).is_file()


def _cli_eval(reference_dir, corpus, cache, scores, env=None):
    cmd = [sys.executable, "-m", "capsv.cli", "eval", "--initial_model",
           str(reference_dir / "ResNetSE34L_CAP.model"), "--model", "ResNetSE34L",
           "--test_list", str(corpus / "trials.txt"), "--test_path", str(corpus),
           "--eval_frames", "40", "--num_eval", "3", "--eval_cache", str(cache),
           "--save_scores", str(scores), "--no_progress", "--nDataLoaderThread", "0",
           "--device", "cpu"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_an_extraction_killed_midway_leaves_a_cache_that_is_not_trusted(reference_dir, corpus, tmp_path):
    cache = tmp_path / "cache"
    killed = _cli_eval(reference_dir, corpus, cache, tmp_path / "no.txt",
                       env={"CAPSV_FAULT": "kill_during_extract:1"})
    assert killed.returncode == -9, killed.stderr
    assert (cache / "frames.f32").stat().st_size > 0 and not (cache / MANIFEST).exists()
    rerun = _cli_eval(reference_dir, corpus, cache, tmp_path / "s.txt")
    assert rerun.returncode == 0, rerun.stderr
    assert "no manifest (an interrupted run?); extracting again" in rerun.stdout
    got = [float(line.split()[3]) for line in (tmp_path / "s.txt").read_text().splitlines()]
    want = _evaluate(_net(reference_dir, "CAP"), corpus, eval_cache=IN_MEMORY).scores
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_a_cache_in_use_or_unusable_is_a_one_line_error(reference_dir, corpus, tmp_path, capsys):
    net = _net(reference_dir, "TAP")
    held = lock_folder(str(tmp_path / "busy"))
    try:
        with pytest.raises(FeatureCacheError, match="in use by another capsv process"):
            _evaluate(net, corpus, eval_cache=str(tmp_path / "busy"))
    finally:
        held.close()
    (tmp_path / "a_file").write_text("")
    code = cli.main(["eval", "--initial_model", str(reference_dir / "ResNetSE34L_TAP.model"),
                     "--model", "ResNetSE34L", "--test_list", str(corpus / "trials.txt"),
                     "--test_path", str(corpus), "--eval_frames", "40", "--num_eval", "3",
                     "--eval_cache", str(tmp_path / "a_file"), "--no_progress",
                     "--nDataLoaderThread", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--eval_cache" in err and len(err.strip().splitlines()) == 1


def test_cohort_statistics_in_blocks_equal_the_whole_table():
    """AS-norm's (files, cohort) table is built a block of files at a time, never whole."""
    from capsv.evaluation.extract import FileFeatures
    from capsv.evaluation.pipeline import _cohort_side_stats
    from capsv.evaluation.scoring import cohort_scores
    from capsv.evaluation.scorenorm import cohort_stats
    from capsv.models.pooling import TAP

    class Net:                     # a TAP model: its head keeps one vector a file
        pooling = TAP(8, 4)

    feats, gen = FileFeatures(), torch.Generator().manual_seed(0)
    for i in range(50):
        feats.keep_mean(i, torch.nn.functional.normalize(torch.randn(8, generator=gen), dim=0), 50)
    cohort = np.array([3, 10, 20, 30, 40, 41, 42, 45, 49])      # 3 and 10 are trial files too
    mean, std = _cohort_side_stats(Net(), feats, np.arange(30), cohort, top_n=4, progress=False, entries=40)
    table = cohort_scores(Net(), feats, np.arange(30), cohort, progress=False)
    table[np.arange(30)[:, None] == cohort[None, :]] = -np.inf
    whole_mean, whole_std = cohort_stats(table, 4)
    np.testing.assert_array_equal(mean, whole_mean)
    np.testing.assert_array_equal(std, whole_std)
