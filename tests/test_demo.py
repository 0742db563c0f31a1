"""`capsv demo` end to end. The real demos are slow (minutes on 2 cores), so excluded from
`make test`: run them with `make test-slow` (the long one, 42 minutes, with `make test-long`).
A tiny plan checks the pipeline in `make test`.

The demos end after a fixed number of optimiser steps per model, so they train the same way
on any machine (a budget in seconds would give a slower CPU a worse model). The quick one
(CI, about 2 minutes) checks that the pipeline runs end to end and that training lowers the
loss; the full one (what `make demo` runs) and the long one are held to a learning margin
over the baselines.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from capsv.cli import main
from capsv.demo import FULL, LONG, QUICK, DemoPlan, run_demo, system_name
from capsv.prep.synth.corpus import CorpusConfig
from processes import (alive, capsv_env, default_stop_signals, group, kill_group,
                       orphans_after_killing, wait_for_pauses)

NETWORKS = tuple(system_name(QUICK, e) for e in ("TAP", "CAP"))
FULL_NETWORKS = tuple(system_name(FULL, e) for e in ("TAP", "CAP"))
SYSTEMS = {"baseline: mean MFCC", "baseline: MFCC mean+std", *NETWORKS}


def run_cli_demo(root, *flags):
    report = root / "report"
    rc = main(["demo", *flags, "--data_dir", str(root / "data"), "--report_dir", str(report),
               "--no_progress"])
    assert rc == 0
    return report, json.loads((report / "demo.json").read_text())["systems"]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    return run_cli_demo(tmp_path_factory.mktemp("demo"), "--quick")


@pytest.mark.slow
def test_quick_demo_writes_table_report_and_curve(quick_demo):
    report, systems = quick_demo
    assert set(systems) == SYSTEMS
    for name, metrics in systems.items():
        assert 0.0 <= metrics["EER"] <= 100.0, name
    table = (report / "table.txt").read_text()
    assert all(name in table for name in SYSTEMS) and "EER %" in table
    for name in ("det_compare.png", "learning_curve.png", "cap/det.png", "cap/score_hist.png",
                 "tap/det.png", "baseline/det.png", "baseline_meanstd/det.png"):
        assert (report / name).stat().st_size > 10_000, name
    assert len((report / "cap/scores.txt").read_text().splitlines()) == 2000
    for name in NETWORKS:
        system = systems[name]
        assert system["samples_per_s"] > 0 and len(system["curve"]) == 2, name
        assert system["curve"][-1]["steps"] == QUICK.steps, name


@pytest.mark.slow
def test_quick_demo_training_lowers_the_loss(quick_demo):
    _, systems = quick_demo
    for name in NETWORKS:
        first, last = systems[name]["first_loss"], systems[name]["last_loss"]
        assert last < first - 0.2, (name, first, last)


@pytest.mark.slow
@pytest.mark.xfail(reason="issue 17 open: the demo's CAP reaches about 0.7x the best baseline's "
                          "EER (README), but no network beats the mean-MFCC baseline's minDCF; "
                          "measured, that takes ~5x the training speakers and 8x the steps: "
                          "`capsv demo --long`, ~42 minutes (README)", strict=False)
def test_full_demo_networks_clearly_beat_both_baselines(tmp_path):
    """What `make demo` shows: the best network's EER at most 0.7 x the best baseline's, a
    better minDCF too, and both networks ahead of both baselines."""
    _, systems = run_cli_demo(tmp_path)
    assert_networks_clearly_beat_both_baselines(systems)


@pytest.mark.slow
@pytest.mark.long
def test_long_demo_networks_clearly_beat_both_baselines(tmp_path):
    """`capsv demo --long` (about 42 minutes on 2 cores; `make test-long`) is held to the
    same margin, minDCF included."""
    _, systems = run_cli_demo(tmp_path, "--long")
    assert_networks_clearly_beat_both_baselines(systems)
    for name in FULL_NETWORKS:
        assert systems[name]["curve"][-1]["steps"] == LONG.steps, name


def assert_networks_clearly_beat_both_baselines(systems: dict) -> None:
    """The best network's EER at most 0.7 x the best baseline's and its minDCF(0.05) below
    every baseline's; both networks' EERs below both baselines'."""
    baselines = [systems[n] for n in ("baseline: mean MFCC", "baseline: MFCC mean+std")]
    networks = [systems[n] for n in FULL_NETWORKS]
    best_baseline = min(b["EER"] for b in baselines)
    assert min(n["EER"] for n in networks) <= 0.7 * best_baseline, systems
    assert max(n["EER"] for n in networks) < best_baseline, systems
    assert min(n["minDCF_p0.05"] for n in networks) < min(b["minDCF_p0.05"] for b in baselines), systems


TINY = DemoPlan(CorpusConfig(speakers=4, test_speakers=4, utterances=4, min_seconds=1.0,
                             max_seconds=1.2, trials=20, seed=3),
                steps=2, max_frames=20, batch_size=2, eval_frames=30, num_eval=1, curve_points=1)


def test_a_second_demo_run_trains_afresh_and_reuses_the_corpus(tmp_path):
    """Rerunning the demo in the same folders must work (it once crashed on the first run's
    finished checkpoints) and must retrain rather than report the old run."""
    lines = []
    for _ in range(2):
        systems = run_demo(str(tmp_path / "data"), str(tmp_path / "report"), progress=False,
                           log=lines.append, plan=TINY)
        assert [s.curve[-1]["steps"] for s in systems[2:]] == [2, 2]
    assert sum("already there" in line for line in lines) == 1
    assert sum("replacing the earlier demo run" in line for line in lines) == 2
    from capsv.utils import resolve_device
    where = str(resolve_device("auto"))          # the default: CUDA when there is one
    assert json.loads((tmp_path / "report" / "demo.json").read_text())["device"] == where
    assert sum(f"on {where})" in line for line in lines) == 2


def test_the_demo_trains_on_the_device_it_is_given(tmp_path):
    from capsv.demo import training_config
    for device in ("cpu", "cuda:1"):
        assert training_config("CAP", FULL, "corpus", "exp", device)["device"] == device


@pytest.mark.parametrize("device", ["tpu", "cuda"])
def test_an_unusable_device_is_refused_before_any_work(tmp_path, capsys, device):
    import torch
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so --device cuda is usable here")
    assert main(["demo", "--quick", "--device", device, "--data_dir", str(tmp_path / "data"),
                 "--report_dir", str(tmp_path / "report"), "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert f"--device {device}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists() and not (tmp_path / "report").exists()


def test_a_corpus_with_other_settings_goes_to_its_own_folder(tmp_path):
    """A demo whose corpus settings changed (a new release) must not trip over the old one."""
    from dataclasses import replace
    from capsv.demo import corpus_folder
    first = corpus_folder(str(tmp_path), "quick", TINY.corpus)
    assert first == corpus_folder(str(tmp_path), "quick", replace(TINY.corpus))
    assert first != corpus_folder(str(tmp_path), "quick", replace(TINY.corpus, trials=22))
    assert first != corpus_folder(str(tmp_path), "full", TINY.corpus)


def test_the_long_plan_keeps_the_demos_test_set_and_trains_more():
    """`capsv demo --long` is the demo with more training speakers and steps; its scores are
    only comparable with the demo's if its test speakers and trials are the same."""
    from dataclasses import replace
    from capsv.prep.synth.corpus import TEST
    per_test = FULL.corpus.clips_per_speaker(TEST)
    assert LONG.corpus == replace(FULL.corpus, speakers=5 * FULL.corpus.speakers,
                                  test_utterances=per_test)
    assert LONG.corpus.clips_per_speaker(TEST) == per_test
    assert LONG.steps == 8 * FULL.steps
    assert replace(LONG, corpus=FULL.corpus, steps=FULL.steps, curve_points=FULL.curve_points) == FULL


def test_more_training_speakers_leave_the_test_files_and_trials_as_they_are(tmp_path):
    """The generator property the long demo relies on: the test speakers' audio and the trial
    list do not depend on how many training speakers there are."""
    import hashlib
    from dataclasses import replace
    from capsv.prep.synth.corpus import generate_corpus

    def test_side(corpus, name):
        out = tmp_path / name
        generate_corpus(corpus, str(out), workers=1, progress=False)
        files = sorted(p for p in out.rglob("*.wav") if p.relative_to(out).parts[-3].startswith("id9"))
        assert files, "no test speakers' files found"
        return ((out / "veri_test.txt").read_bytes(),
                {str(p.relative_to(out)): hashlib.md5(p.read_bytes()).hexdigest() for p in files})

    small = replace(TINY.corpus, test_utterances=TINY.corpus.utterances)
    assert test_side(small, "few") == test_side(replace(small, speakers=9, utterances=3), "more")


def test_quick_and_long_together_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quick", "--long", "--data_dir", str(tmp_path)])
    assert exc.value.code == 2
    config = tmp_path / "both.yaml"
    config.write_text("quick: true\nlong: true\n")
    assert main(["demo", "--config", str(config), "--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--quick and --long" in err and "Traceback" not in err
    assert not (tmp_path / "exps").exists()


def _start_tiny_demo(tmp_path, fault: str) -> subprocess.Popen:
    """``capsv demo --quick`` in a new session, with the quick plan swapped for TINY (whose
    50 steps outlast the test) and fault hook ``fault`` armed."""
    from dataclasses import replace
    code = ("import sys\nfrom capsv import demo\nfrom capsv.cli import main\n"
            "from capsv.demo import DemoPlan\nfrom capsv.prep.synth.corpus import CorpusConfig\n"
            f"demo.PLANS['quick'] = {replace(TINY, steps=50)!r}\n"
            f"sys.exit(main(['demo', '--quick', '--device', 'cpu', '--no_progress', "
            f"'--data_dir', {str(tmp_path / 'data')!r}, '--report_dir', {str(tmp_path / 'report')!r}]))\n")
    return subprocess.Popen([sys.executable, "-c", code], env=capsv_env(CAPSV_FAULT=fault),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_stop_signals)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_training_processes_die_with_the_demo(tmp_path, signum):
    """The demo dies (killed, so no cleanup runs) while its two training processes are
    mid-run (hook pause_after_step: they wait a minute): they must be gone within seconds."""
    proc = _start_tiny_demo(tmp_path, "pause_after_step")
    try:
        trainers = wait_for_pauses(proc, "pause_after_step", 2)
    except BaseException:
        kill_group(proc)
        raise
    orphans = orphans_after_killing(proc, trainers, signum)
    assert not orphans, f"training processes {orphans} outlived the demo"


def test_ctrl_c_during_training_ends_the_demo_with_one_line(tmp_path):
    """Ctrl-C (SIGINT to the whole process group) while both models train: exit 130 with
    one line, no traceback, no process left."""
    proc = _start_tiny_demo(tmp_path, "pause_after_step")
    try:
        trainers = wait_for_pauses(proc, "pause_after_step", 2)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        left = group(proc.pid) + [pid for pid in trainers if alive(pid)]
    finally:
        kill_group(proc)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("capsv demo: interrupted") and "same command again" in last, err[-2000:]
    assert not left, f"processes {left} outlived the demo"
