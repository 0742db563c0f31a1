"""`capsv eval` and the paper's `trainSpeakerNet.py --eval` on the reference fixtures, and bad input."""
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from capsv.cli import legacy_main, main

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _copy_wavs(reference_dir, dest):
    import shutil
    shutil.copytree(reference_dir / "wav", dest)
    return dest


def _parse_metrics(out):
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    return float(lines["EER"]), float(lines["MinDCF(p=0.05)"]), float(lines["MinDCF(p=0.01)"])


def test_cli_eval_prints_metrics_and_saves_scores(reference_dir, tmp_path, capsys):
    scores = tmp_path / "scores.txt"
    rc = main(["eval", "--model", "ResNetSE34L", "--initial_model", str(reference_dir / "ResNetSE34L_CAP.model"),
               "--test_list", str(reference_dir / "trials.txt"), "--test_path", str(reference_dir / "wav"),
               "--save_scores", str(scores), "--nDataLoaderThread", "0", "--no_progress"])
    assert rc == 0
    eer, dcf5, _ = _parse_metrics(capsys.readouterr().out)
    assert eer == 50.0 and dcf5 == pytest.approx(0.83333, abs=1e-5)
    ours = [line.split() for line in scores.read_text().splitlines()]
    ref = [line.split() for line in (reference_dir / "ResNetSE34L_CAP.scores.txt").read_text().splitlines()]
    assert [r[:3] for r in ours] == [r[:3] for r in ref]
    assert max(abs(float(a[3]) - float(b[3])) for a, b in zip(ours, ref)) < 1e-5


def test_paper_command_shape_via_shim(reference_dir):
    cmd = [sys.executable, str(REPO_ROOT / "trainSpeakerNet.py"), "--eval", "--model", "ResNetSE34L",
           "--encoder_type", "TAP", "--initial_model", str(reference_dir / "ResNetSE34L_TAP.model"),
           "--test_list", str(reference_dir / "trials.txt"), "--test_path", str(reference_dir / "wav"),
           "--eval_frames", "350", "--no_progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert _parse_metrics(out.stdout)[0] == 50.0


def _run_eval(reference_dir, test_list, test_path, capsys, *extra):
    rc = main(["eval", "--model", "ResNetSE34L", "--initial_model", str(reference_dir / "ResNetSE34L_TAP.model"),
               "--test_list", str(test_list), "--test_path", str(test_path), "--no_progress", *extra])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("line, message", [
    ("1 a.wav", ":1: expected 3 fields"),
    ("2 a.wav b.wav", ":1: label must be 0 or 1"),
    ("yes a.wav b.wav", "label must be 0 or 1"),
])
def test_bad_trial_lines_name_the_line(reference_dir, tmp_path, capsys, line, message):
    trials = tmp_path / "t.txt"
    trials.write_text(line + "\n")
    rc, err = _run_eval(reference_dir, trials, reference_dir / "wav", capsys)
    assert rc == 2 and message in err and "Traceback" not in err


def test_all_missing_files_are_listed(reference_dir, tmp_path, capsys):
    trials = tmp_path / "t.txt"
    trials.write_text("1 id10001/vidA/00001.wav gone/one.wav\n0 gone/two.wav id10001/vidA/00002.wav\n")
    rc, err = _run_eval(reference_dir, trials, reference_dir / "wav", capsys)
    assert rc == 2 and "2 of 4 files" in err and "gone/one.wav" in err and "gone/two.wav" in err


def test_corrupt_and_wrong_rate_files(reference_dir, tmp_path, capsys):
    root = _copy_wavs(reference_dir, tmp_path / "wav")
    (root / "id10001/vidA/00001.wav").write_bytes(b"garbage" * 100)
    sf.write(root / "id10001/vidA/00002.wav", np.zeros(8000, np.int16), 8000, subtype="PCM_16")
    rc, err = _run_eval(reference_dir, reference_dir / "trials.txt", root, capsys, "--strict_audio")
    assert rc == 2
    assert "00001.wav: cannot read audio" in err
    assert "00002.wav: sample rate is 8000 Hz" in err


def test_single_label_list_is_rejected_before_work(reference_dir, tmp_path, capsys):
    trials = tmp_path / "t.txt"
    trials.write_text("1 id10001/vidA/00001.wav id10001/vidA/00002.wav\n")
    rc, err = _run_eval(reference_dir, trials, reference_dir / "wav", capsys)
    assert rc == 2 and "all 1 trials are target" in err


def test_stereo_file_is_downmixed_with_warning(reference_dir, tmp_path, capsys):
    root = _copy_wavs(reference_dir, tmp_path / "wav")
    path = root / "id10001/vidA/00001.wav"
    mono, rate = sf.read(path, dtype="int16")
    sf.write(path, np.stack([mono, mono], axis=1), rate, subtype="PCM_16")
    with pytest.warns(UserWarning, match="downmixed"):
        rc = main(["eval", "--model", "ResNetSE34L", "--initial_model", str(reference_dir / "ResNetSE34L_TAP.model"),
                   "--test_list", str(reference_dir / "trials.txt"), "--test_path", str(root),
                   "--nDataLoaderThread", "0", "--no_progress"])
    assert rc == 0


def test_yaml_config_with_cli_override(reference_dir, tmp_path, capsys):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"model: ResNetSE34L\ntest_list: {reference_dir / 'trials.txt'}\n"
                   f"test_path: /nonexistent\nnum_eval: 2\n")
    rc = main(["eval", "--config", str(cfg), "--initial_model", str(reference_dir / "ResNetSE34L_TAP.model"),
               "--test_path", str(reference_dir / "wav"), "--no_progress", "--nDataLoaderThread", "0"])
    assert rc == 0          # the typed --test_path won over the file's
    cfg.write_text("no_such_flag: 1\n")
    rc = main(["eval", "--config", str(cfg), "--initial_model", "x"])
    assert rc == 2 and "unknown key 'no_such_flag'" in capsys.readouterr().err


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for flag in ("--initial_model", "--test_list", "--test_path", "--eval_frames", "--num_eval",
                 "--nOut", "--save_scores", "--device", "--config"):
        assert flag in out


def test_legacy_without_train_flags(reference_dir, capsys):
    rc = legacy_main(["--eval", "--model", "ResNetSE34L", "--initial_model",
                      str(reference_dir / "ResNetSE34L_TAP.model"), "--test_list",
                      str(reference_dir / "trials.txt"), "--test_path", str(reference_dir / "wav"),
                      "--no_progress", "--nDataLoaderThread", "0"])
    assert rc == 0


def _write_clips(root, seconds):
    names = []
    for i, s in enumerate(seconds):
        name = f"spk{i % 2}/clip{i}.wav"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(i)
        sf.write(root / name, (0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32), 16000)
        names.append(name)
    return names


def test_crops_longer_than_most_files_are_warned_about(tmp_path, capsys):
    from capsv.data.lists import read_trials
    from capsv.evaluation.inputs import validate_inputs
    names = _write_clips(tmp_path, [1.5, 2.0, 2.5, 4.0])
    (tmp_path / "trials.txt").write_text(f"1 {names[0]} {names[2]}\n0 {names[1]} {names[3]}\n")
    trials = read_trials(str(tmp_path / "trials.txt"))
    validate_inputs(trials, str(tmp_path), "trials.txt", eval_frames=350)
    out = capsys.readouterr().out
    assert "3 of 4 files in trials.txt are shorter than one --eval_frames 350 crop" in out
    assert "the shortest is 1.50 s" in out and "zero-padded" in out
    suggested = int(out.split("--eval_frames ")[-1].split()[0])
    assert 100 <= suggested <= 150           # fits the 1.5 s clip (150 frames = 1.5024 s)
    validate_inputs(trials, str(tmp_path), "trials.txt", eval_frames=suggested)
    assert "shorter than" not in capsys.readouterr().out
    validate_inputs(trials, str(tmp_path), "trials.txt")          # no crop size: no check
    assert capsys.readouterr().out == ""
