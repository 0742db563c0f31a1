"""The demo sweep (bench/learning/demo_sweep.py): every variant is a configuration the trainer
accepts, compares at the demo's budget of crop-seconds unless it says otherwise, and the
summary ranks variants by their measured EER."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench", "learning"))

import demo_sweep  # noqa: E402

from capsv.train.config import TrainConfig

def crop_seconds(plan) -> float:
    return plan.steps * plan.batch_size * plan.n_speakers * plan.max_frames / 100


# variants that spend more than the old demo's crop-seconds, on purpose: more compute, or the
# same CPU-seconds of the faster Thin ResNet-34
MORE_COMPUTE = {"2x-lr0.01": 2, "4x-lr0.01": 4, "thin-lr0.01": 2.4, "thin-crop100-lr0.01": 2.2,
                "thin4x-lr0.01": 4, "thin6x-lr0.01": 6, "thin3x-lr0.02": 3,
                "thin720": 3, "demo-sp": 3, "thin720-cl": 3, "thin900-cl": 3.75,
                "thin-crop100-cl": 3.75, "thin-crop150-cl": 3.75, "thin-crop150-cl-360": 4.5,
                "thin-crop200-cl": 3.73,
                "demo": crop_seconds(demo_sweep.demo.FULL) / crop_seconds(demo_sweep.FULL)}
MORE_COMPUTE.update({f"demo-x{k}": k * MORE_COMPUTE["demo"] for k in (2, 4, 8)})


@pytest.mark.parametrize("name", sorted(demo_sweep.VARIANTS))
def test_each_variant_is_a_valid_training_config_at_the_demos_budget(name, tmp_path):
    encoders = ("TAP",) if name in demo_sweep.TAP_ONLY else ("TAP", "CAP")
    for encoder in encoders:
        plan, config = demo_sweep.variant_config(name, encoder, str(tmp_path), str(tmp_path / "run"))
        cfg = TrainConfig.from_any(config)          # unknown or invalid options raise here
        assert cfg.encoder_type == encoder and cfg.max_steps == plan.steps
    budget = crop_seconds(demo_sweep.FULL) * MORE_COMPUTE.get(name, 1)
    assert crop_seconds(plan) == pytest.approx(budget, rel=0.03)


@pytest.mark.parametrize("name", sorted(demo_sweep.VARIANTS))
def test_each_variant_is_recorded_as_json(name):
    plan_changes, config_changes = demo_sweep.VARIANTS[name]
    assert json.loads(json.dumps({"plan": plan_changes, "config": config_changes}))


def test_the_demo_variant_is_what_capsv_demo_trains(tmp_path):
    for encoder in ("TAP", "CAP"):
        plan, config = demo_sweep.variant_config("demo", encoder, str(tmp_path), str(tmp_path / "r"))
        assert plan == demo_sweep.demo.FULL
        assert config == demo_sweep.demo.training_config(encoder, plan, str(tmp_path), str(tmp_path / "r"))


def test_steps_factor_scales_the_run():
    plan, _ = demo_sweep.variant_config("base", "CAP", "c", "s", steps_factor=0.5)
    assert plan.steps == demo_sweep.FULL.steps // 2


def row(variant, seed, tap, cap, dcf=0.9):
    curve = lambda eer: {"curve": [{"steps": 1, "EER": eer + 5, "minDCF_p0.05": 1.0},
                                   {"steps": 2, "EER": eer, "minDCF_p0.05": dcf}]}
    out = {"variant": variant, "seed": seed, "steps": 2}
    if tap is not None:
        out["TAP"] = curve(tap)
    if cap is not None:
        out["CAP"] = curve(cap)
    return out


def test_summary_ranks_by_the_mean_final_eer_of_the_better_network():
    rows = [row("a", 0, 40, 30), row("a", 1, 40, 34),      # best network: mean 32
            row("b", 0, 29, 35), row("b", 1, 33, 35),      # mean 31
            row("c", 0, 38, None)]                         # TAP only: 38
    text = demo_sweep.summarise(rows, {"base": {"EER": 30.0, "minDCF_p0.05": 0.85}})
    lines = [line for line in text.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [line.split("|")[1].strip() for line in lines] == ["b", "a", "c"]
    assert "| b | 2 | 2 | 31.00 | 35.00 |" in text
    assert "EER <= 21.00 %" in text
    assert "nan" in lines[2]          # c has no CAP run: shown as missing, not as a number


def test_tap_only_variants_use_classifier_losses():
    for name in demo_sweep.TAP_ONLY:
        assert demo_sweep.VARIANTS[name][1]["trainfunc"] in ("softmax", "amsoftmax", "aamsoftmax")


def _learning_run_module():
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "bench", "learning", "run.py")
    spec = importlib.util.spec_from_file_location("bench_learning_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_refuses_a_folder_without_models_or_the_asked_steps(tmp_path, capsys):
    """A wrong run path or step once did nothing and exited 0, silently."""
    from capsv.models.checkpoint import save_checkpoint
    from capsv.models.speakernet import SpeakerNet
    run = _learning_run_module()
    assert run.main(["--corpus", str(tmp_path), "evaluate", str(tmp_path / "nowhere")]) == 2
    assert "no model/*.model" in capsys.readouterr().err
    (tmp_path / "r" / "model").mkdir(parents=True)
    save_checkpoint(str(tmp_path / "r" / "model" / "curve000000140.model"),
                    SpeakerNet("ResNetSE34", "TAP", nOut=8), meta={"budget": {"steps": 140}})
    assert run.main(["--corpus", str(tmp_path), "evaluate", str(tmp_path / "r"),
                     "--steps", "141"]) == 2
    assert "no model kept at steps [141]; kept: [140]" in capsys.readouterr().err


def test_a_second_sweep_on_the_same_data_folder_is_refused(tmp_path, capsys):
    """Two sweeps in one --data folder would delete each other's run folders."""
    from capsv.runlock import run_lock
    with run_lock(str(tmp_path / "data")):
        assert demo_sweep.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                                "--only", "base", "--seeds", "0"]) == 2
    assert "in use by another demo sweep" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
