"""`capsv demo` end to end. The real demos are slow (minutes on 2 cores), so excluded from
`make test`: run them with `make test-slow`. A tiny plan checks the rerun path in `make test`.

Both demos stop after a fixed number of epochs (the full one also on a time budget, which on
a quiet 2-core machine it reaches first), so the quick one trains the same way on any
machine. Measured on the development machine (2-vCPU AMD EPYC, bf16 autocast):
- full (8 min 31 s from a fresh clone): mean-MFCC baseline 33.5 % EER, MFCC mean+std
  33.0 %, TAP 27.75 %, CAP 30.0 %;
- quick (96 training speakers x 6 clips, 10 epochs of 0.5 s crops, ~5,800 crops per model,
  108 s in all, 2,000 trials): baselines 32.0 / 30.4 %, TAP 46.1 %, CAP 35.2 %. At this
  budget the networks are not yet at the baseline's level (longer probes: CAP needs roughly
  twice to three times the training to match it and more to beat it clearly), so the quick
  assertion that CAP beats the baseline is an explicit expected failure (issue 4 is blocked
  on it), never a silent pass.
"""
import json

import pytest

from capsv.cli import main
from capsv.prep.synth.corpus import CorpusConfig
from capsv.demo import DemoPlan, run_demo

SYSTEMS = {"baseline: mean MFCC", "baseline: MFCC mean+std", "ResNetSE34L + TAP",
           "ResNetSE34L + CAP"}


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
def test_quick_demo_writes_table_and_report(quick_demo):
    report, systems = quick_demo
    assert set(systems) == SYSTEMS
    for name, metrics in systems.items():
        assert 0.0 <= metrics["EER"] <= 100.0, name
    table = (report / "table.txt").read_text()
    assert all(name in table for name in SYSTEMS) and "EER %" in table
    for name in ("det_compare.png", "cap/det.png", "cap/score_hist.png", "tap/det.png",
                 "baseline/det.png", "baseline_meanstd/det.png"):
        assert (report / name).stat().st_size > 10_000, name
    assert len((report / "cap/scores.txt").read_text().splitlines()) == 2000
    for name in ("ResNetSE34L + TAP", "ResNetSE34L + CAP"):
        assert systems[name]["epochs"] == 10 and systems[name]["samples_per_s"] > 0, name


@pytest.mark.slow
@pytest.mark.xfail(reason="issue 4 blocked: ~5,800 crops per model (the 2-minute budget on 2 CPU "
                          "cores) leave CAP short of the baseline", strict=False)
def test_quick_demo_cap_beats_the_mean_mfcc_baseline(quick_demo):
    _, systems = quick_demo
    assert systems["ResNetSE34L + CAP"]["EER"] < systems["baseline: mean MFCC"]["EER"], systems


@pytest.mark.slow
def test_full_demo_cap_beats_both_baselines(tmp_path):
    """What `make demo` shows (about 9 minutes): trained, but not perfect."""
    _, systems = run_cli_demo(tmp_path)
    cap = systems["ResNetSE34L + CAP"]["EER"]
    assert 5.0 < cap < min(systems["baseline: mean MFCC"]["EER"],
                           systems["baseline: MFCC mean+std"]["EER"]), systems


TINY = DemoPlan(CorpusConfig(speakers=4, test_speakers=4, utterances=4, min_seconds=1.0,
                             max_seconds=1.2, trials=20, seed=3),
                max_epochs=1, budget_s=None, max_frames=20, batch_size=2, eval_frames=30,
                num_eval=1)


def test_a_second_demo_run_trains_afresh_and_reuses_the_corpus(tmp_path):
    """Rerunning the demo in the same folders must work (it once crashed on the first run's
    finished checkpoints) and must retrain rather than report the old run."""
    lines = []
    for _ in range(2):
        systems = run_demo(str(tmp_path / "data"), str(tmp_path / "report"), progress=False,
                           log=lines.append, plan=TINY)
        assert [s.epochs for s in systems[2:]] == [1, 1]
    assert sum("already there" in line for line in lines) == 1
    assert sum("replacing the earlier demo run" in line for line in lines) == 2


def test_a_corpus_with_other_settings_goes_to_its_own_folder(tmp_path):
    """A demo whose corpus settings changed (a new release) must not trip over the old one."""
    from dataclasses import replace
    from capsv.demo import corpus_folder
    first = corpus_folder(str(tmp_path), "quick", TINY.corpus)
    assert first == corpus_folder(str(tmp_path), "quick", replace(TINY.corpus))
    assert first != corpus_folder(str(tmp_path), "quick", replace(TINY.corpus, trials=22))
    assert first != corpus_folder(str(tmp_path), "full", TINY.corpus)
