"""`capsv demo --quick` end to end. Slow (minutes on 2 cores), so excluded from `make test`:
run with `make test-slow`.

Known open point (issue 4): at the quick budget on a 2-core CPU the networks train for only an
epoch or two and do not yet beat the mean-MFCC baseline; that assertion is kept as an explicit
expected failure until the training budget/speed closes the gap, never as a silent pass.
"""
import json

import pytest

from capsv.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    report = root / "report"
    rc = main(["demo", "--quick", "--data_dir", str(root / "data"), "--report_dir", str(report),
               "--no_progress"])
    assert rc == 0
    return report, json.loads((report / "demo.json").read_text())["systems"]


def test_quick_demo_writes_table_and_report(quick_demo):
    report, systems = quick_demo
    assert set(systems) == {"baseline (mean MFCC)", "ResNetSE34L + TAP", "ResNetSE34L + CAP"}
    for name, metrics in systems.items():
        assert 0.0 <= metrics["EER"] <= 100.0, name
    table = (report / "table.txt").read_text()
    assert "ResNetSE34L + CAP" in table and "EER %" in table
    for name in ("det_compare.png", "cap/det.png", "cap/score_hist.png", "tap/det.png", "baseline/det.png"):
        assert (report / name).stat().st_size > 10_000, name
    assert len((report / "cap/scores.txt").read_text().splitlines()) == 300


@pytest.mark.xfail(reason="issue 4 open: the quick budget is too small for CAP to beat the MFCC baseline on CPU",
                   strict=False)
def test_quick_demo_cap_beats_baseline(quick_demo):
    _, systems = quick_demo
    assert systems["ResNetSE34L + CAP"]["EER"] < systems["baseline (mean MFCC)"]["EER"]
