"""`capsv demo --quick`: the whole pipeline end to end, and CAP must beat the hand-made baseline."""
import json

from capsv.cli import main


def test_quick_demo_trains_cap_past_the_baseline(tmp_path, capsys):
    report = tmp_path / "report"
    rc = main(["demo", "--quick", "--data_dir", str(tmp_path / "data"), "--report_dir", str(report),
               "--no_progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "ResNetSE34L + CAP" in out and "baseline (mean MFCC)" in out
    systems = json.loads((report / "demo.json").read_text())["systems"]
    baseline = systems["baseline (mean MFCC)"]["EER"]
    cap = systems["ResNetSE34L + CAP"]["EER"]
    assert cap < baseline, f"trained CAP EER {cap:.1f}% did not beat the baseline's {baseline:.1f}%"
    for name in ("det_compare.png", "table.txt", "cap/det.png", "cap/score_hist.png", "tap/scores.txt"):
        assert (report / name).stat().st_size > 1000 or name.endswith(".txt")
