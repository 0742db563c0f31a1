"""Training: parity with the paper's code, learning on generated speakers, config and errors."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch

from capsv.models.checkpoint import split_reference_state
from capsv.cli import main as cli_main
from capsv.commands import train as train_command
from capsv.config import apply_config
from capsv.data.dataset import TrainDataError
from capsv.data.sampler import SamplerError
from capsv.errors import CapsvError
from capsv.evaluation.inputs import EvalInputError
from capsv.evaluation.pipeline import evaluate_list
from capsv.train.losses import Objective
from capsv.models import SpeakerNet
from capsv.train import (TrainConfig, TrainError, forward_batch, load_initial_model,
                         make_optimizer, train)

from speech_like import make_corpus, write_train_list, write_trials


@pytest.fixture
def one_thread():
    """Deterministic, and immune to oversubscription on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------- parity with the paper
def _fixture_batch(reference_dir):
    step = reference_dir / "train_step"
    waves = torch.from_numpy(np.concatenate(
        [np.load(step / f"input_{name}.npy") for name in ("support", "query1", "query2")]))
    labels = torch.from_numpy(np.load(step / "labels.npy"))
    meta = json.loads((reference_dir / "train_step.json").read_text())
    return waves, labels.repeat(3), meta


def _rel(a, b) -> float:
    return abs(a - b) / abs(b)


def _reference_names(named: dict) -> dict:
    """capsv parameter names -> the reference's ``__S__.*`` names."""
    out = {}
    for name, value in named.items():
        for prefix in ("backbone.", "pooling."):
            if name.startswith(prefix):
                out["__S__." + name[len(prefix):]] = value
    return out


# The first convolution's gradient at the fixture's step is ill-conditioned: the same step
# run in float64 differs from the float32 reference by 1.6 % of the update, so float32 results
# depend on the CPU's kernels (measured 1.2 % on an AVX-512 machine). Checked against the
# update's size; every other tensor to 1e-4 of its norm. The same sensitivity shows in the
# early layers' gradient and post-step norms, checked all together tightly, one by one loosely.
ILL_CONDITIONED = {"backbone.conv1.weight"}


def test_cap_training_step_matches_the_reference(reference_dir, one_thread):
    """ResNetSE34L + CAP, proto + global classifier, per-group BatchNorm: losses, logits,
    gradients and the weights after one SGD step equal the original code's."""
    waves, labels, meta = _fixture_batch(reference_dir)
    net = SpeakerNet("ResNetSE34L", "CAP", 512)
    objective = Objective("proto", 512, n_classes=5994, global_clf=True)
    load_initial_model(str(reference_dir / "ResNetSE34L_CAP.model"), net, objective, log=lambda m: None)
    optimizer, _ = make_optimizer(TrainConfig(optimizer="sgd", lr=meta["lr"]),
                                  list(net.parameters()) + list(objective.parameters()))
    net.train()
    out = forward_batch(net, objective, waves, labels, batch_size=5, per_group_bn=True)

    assert _rel(out.parts["loss_e"].item(), meta["loss_e"]) < 1e-4
    assert _rel(out.parts["loss_g"].item(), meta["loss_g"]) < 1e-4
    assert _rel(out.loss.item(), meta["total"]) < 1e-4
    assert out.top1 == pytest.approx(meta["top1"], rel=1e-4)
    step = reference_dir / "train_step"
    np.testing.assert_allclose(out.logits.detach().numpy(), np.load(step / "logit_e.npy"),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.global_logits.detach().numpy(), np.load(step / "logit_g.npy"),
                               rtol=1e-4, atol=1e-4)

    optimizer.zero_grad()
    out.loss.backward()
    grads = _reference_names({n: p.grad for n, p in net.named_parameters()})
    grads["__S__.global_w"] = objective.global_clf.weight.grad
    # Per-parameter gradient norms are sensitive to rounding here (per-group BatchNorm over
    # groups of 5 amplifies it): the same step in float64 differs from the float32 reference
    # by up to 3 % on a few SE biases and 1.3e-3 over all norms together, and float32 results
    # move with the CPU's kernels. So: all norms together tightly, each one loosely.
    expected = {name: meta["grad_norms_before_step"][name] for name in grads}
    ours = np.array([grads[name].norm().item() for name in expected])
    theirs = np.array(list(expected.values()))
    assert np.linalg.norm(ours - theirs) <= 3e-3 * np.linalg.norm(theirs)
    for name, value in zip(expected, ours):
        assert value == pytest.approx(expected[name], rel=5e-2, abs=1e-5), name
    initial = {name: value.detach().double().clone() for name, value in net.state_dict().items()}
    optimizer.step()

    after = np.load(step / "after_step.npz")
    ours, _ = split_reference_state({k: torch.from_numpy(after[k]) for k in after.files})
    state = net.state_dict()
    for name, expected in ours.items():
        got, expected = state[name].double(), expected.double()
        if name in ILL_CONDITIONED:
            update = expected - initial[name]
            assert (got - expected).norm() <= 3e-2 * update.norm(), name
        else:
            assert (got - expected).norm() <= 1e-4 * expected.norm() + 1e-12, name
    param_norms = _reference_names({n: t for n, t in net.state_dict().items()})
    param_norms["__S__.global_w"] = objective.global_clf.weight.detach()
    # the torchaudio buffers have no capsv counterpart
    expected = {k: v for k, v in meta["param_norms_after_step"].items() if k in param_norms}
    ours = np.array([param_norms[name].double().norm().item() for name in expected])
    theirs = np.array(list(expected.values()))
    assert np.linalg.norm(ours - theirs) <= 1e-4 * np.linalg.norm(theirs)
    for name, value in zip(expected, ours):   # float64 vs the reference: up to 0.4 %
        assert value == pytest.approx(expected[name], rel=1e-2), name


def test_joint_batchnorm_mode_differs_from_the_reference(reference_dir, one_thread):
    """The default (one forward over all crops) is a different, faster computation: the parity
    above really depends on --per_group_bn."""
    waves, labels, meta = _fixture_batch(reference_dir)
    net = SpeakerNet("ResNetSE34L", "CAP", 512)
    objective = Objective("proto", 512, n_classes=5994, global_clf=True)
    load_initial_model(str(reference_dir / "ResNetSE34L_CAP.model"), net, objective, log=lambda m: None)
    with torch.no_grad():
        out = forward_batch(net.train(), objective, waves, labels, batch_size=5)
    assert torch.isfinite(out.loss)
    assert _rel(out.parts["loss_e"].item(), meta["loss_e"]) > 1e-3


def test_tap_training_step_matches_the_reference(reference_dir, one_thread):
    """extra_proto_steps: the TAP checkpoint with the CAP file's global_w, same batch."""
    waves, labels, meta = _fixture_batch(reference_dir)
    expected = meta["extra_proto_steps"]["ResNetSE34L_TAP"]
    net = SpeakerNet("ResNetSE34L", "TAP", 512)
    objective = Objective("proto", 512, n_classes=5994, global_clf=True)
    load_initial_model(str(reference_dir / "ResNetSE34L_TAP.model"), net, objective, log=lambda m: None)
    cap_state = torch.load(reference_dir / "ResNetSE34L_CAP.model", weights_only=True)
    with torch.no_grad():
        objective.global_clf.weight.copy_(cap_state["__S__.global_w"])
        out = forward_batch(net.train(), objective, waves, labels, batch_size=5, per_group_bn=True)
        frames = torch.cat([net.frames(g) for g in waves.split(5)])
    assert _rel(out.parts["loss_e"].item(), expected["loss_e"]) < 1e-4
    assert _rel(out.parts["loss_g"].item(), expected["loss_g"]) < 1e-4
    assert out.top1 == pytest.approx(expected["top1"], rel=1e-4)
    step = reference_dir / "train_step"
    emb = net.pooling(frames).detach().numpy()
    np.testing.assert_allclose(emb[:5], np.load(step / "ResNetSE34L_TAP.spk_s.npy"), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(emb[5:], np.load(step / "ResNetSE34L_TAP.spk_q.npy"), rtol=1e-3, atol=1e-3)


def test_sap_training_step_matches_the_reference(reference_dir):
    """The fixture records SAP's losses but ships no SAP checkpoint to start from."""
    if not (reference_dir / "ResNetSE34L_SAP.model").exists():
        pytest.skip("no ResNetSE34L_SAP.model in the reference fixtures: SAP parity unverifiable")
    raise AssertionError("a SAP checkpoint appeared: write the SAP parity check")


def test_reference_global_w_of_another_shape_is_ignored_with_a_warning(reference_dir):
    net = SpeakerNet("ResNetSE34L", "CAP", 512)
    objective = Objective("proto", 512, n_classes=7, global_clf=True)
    before = objective.global_clf.weight.detach().clone()
    messages = []
    load_initial_model(str(reference_dir / "ResNetSE34L_CAP.model"), net, objective, messages.append)
    assert torch.equal(objective.global_clf.weight, before)
    assert any("global_w (5994, 512) ignored (shape (7, 512) here)" in m for m in messages)


# ----------------------------------------------------------------------- learning
def test_training_learns_speakers_it_never_saw(tmp_path, one_thread):
    """160 generated training speakers, 60 steps of TAP + proto + global classifier; EER on
    12 held-out speakers (66 target / 1062 non-target trials).

    Bound: EER < 15 %. Chance is 50 %; the untrained network scores > 25 % (checked), and
    trained runs with seeds 0/1/2 gave 1.5 / 4.6 / 2.8 %, so the bound has a 3x margin over
    the worst seen while still failing any run that has not learnt. Evaluation uses whole
    utterances (--eval_frames 0): these files are 1-1.6 s, and padding them to a fixed crop
    would mostly measure the zeros.
    """
    train_items = make_corpus(str(tmp_path / "train"), 160, 2, seconds=(0.5, 1.0), seed=1)
    test_items = make_corpus(str(tmp_path / "test"), 12, 4, seconds=(1.0, 1.6), seed=2,
                             prefix="heldout")
    write_train_list(str(tmp_path / "train.txt"), train_items)
    write_trials(str(tmp_path / "trials.txt"), test_items)

    torch.manual_seed(0)
    untrained = SpeakerNet("ResNetSE34L", "TAP", 128)
    before = evaluate_list(untrained, str(tmp_path / "trials.txt"), str(tmp_path / "test"),
                           eval_frames=0, progress=False).metrics.eer
    summary = train(dict(
        model="ResNetSE34L", encoder_type="TAP", nOut=128, trainfunc="proto", global_clf=True,
        nSpeakers=2, batch_size=16, max_frames=20, optimizer="adam", lr=0.003, max_epoch=6,
        test_interval=6, train_list=str(tmp_path / "train.txt"), train_path=str(tmp_path / "train"),
        test_list=str(tmp_path / "trials.txt"), test_path=str(tmp_path / "test"), eval_frames=0,
        save_path=str(tmp_path / "run"), nDataLoaderThread=0, no_progress=True, seed=0))
    assert before > 25.0
    assert summary.eer < 15.0, f"EER {summary.eer:.1f} % after training (untrained {before:.1f} %)"
    assert summary.final_epoch == 6 and summary.epochs_run == 6 and summary.samples_per_s > 0
    rows = [json.loads(line) for line in open(tmp_path / "run/result/metrics.jsonl")]
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["EER"] == summary.eer
    ckpt = torch.load(summary.checkpoint, weights_only=True)
    assert ckpt["meta"]["eer_threshold"] == pytest.approx(summary.metrics["EER_threshold"])
    assert ckpt["meta"]["epoch"] == 6 and len(ckpt["meta"]["train_list_sha256"]) == 64


# ----------------------------------------------------------------------- config and flags
def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return apply_config(parser.parse_args(argv), parser, train_command.add_arguments, argv)


def test_one_line_yaml_config_and_command_line_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("{nSpeaker: 4, batch_size: 50, encoder_type: TAP, global_clf: true}\n")
    args = _parse(["--config", str(config), "--batch_size", "9"])
    assert (args.nSpeakers, args.batch_size, args.encoder_type, args.global_clf) == (4, 9, "TAP", True)
    assert args.max_frames == 200 and args.lr == 0.1          # untouched defaults
    assert TrainConfig.from_any(args).batch_size == 9


def test_paper_configs_carry_the_seed_commands_values():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    for model in ("ResNetSE34L", "ResNetSE34"):
        for pooling in ("TAP", "SAP", "CAP"):
            args = _parse(["--config", os.path.join(root, f"{model}_{pooling}.yaml")])
            assert (args.model, args.encoder_type, args.trainfunc, args.global_clf) == \
                (model, pooling, "proto", True)
            assert (args.nSpeakers, args.batch_size, args.max_frames, args.eval_frames) == (3, 200, 200, 350)
            assert (args.optimizer, args.lr, args.test_interval) == ("sgd", 0.1, 5)


def test_seed_readme_flags_are_all_accepted():
    args = _parse("--model ResNetSE34L --encoder_type CAP --trainfunc proto --global_clf "
                  "--nSpeaker 3 --save_path ./data/test --batch_size 200 --max_frames 200 "
                  "--eval_frames 350 --optimizer sgd --lr 0.1 --train_list ./data/train_list.txt "
                  "--train_path ./data/voxceleb/voxceleb2 --test_list ./data/veri_test.txt "
                  "--test_path ./data/voxceleb/voxceleb1 --test_interval 5 --max_seg_per_spk 100 "
                  "--nDataLoaderThread 5 --max_epoch 500 --initial_model x.model --seed 3 "
                  "--device cpu --margin 0.2 --scale 30 --lr_decay 0.95 --nOut 512".split())
    cfg = TrainConfig.from_any(args)
    assert (cfg.nSpeakers, cfg.global_clf, cfg.save_path, cfg.seed) == (3, True, "./data/test", 3)


# ----------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    items = make_corpus(str(root / "wav"), 6, 3, seconds=(0.3, 0.6), seed=5)
    write_train_list(str(root / "train.txt"), items)
    return root


def _args(root, tmp_path, **overrides):
    args = dict(model="ResNetSE34L", encoder_type="TAP", nOut=16, trainfunc="proto",
                nSpeakers=2, batch_size=3, max_frames=10, max_epoch=1,
                train_list=str(root / "train.txt"), train_path=str(root / "wav"),
                save_path=str(tmp_path / "run"), nDataLoaderThread=0, no_progress=True)
    args.update(overrides)
    return args


def test_train_list_line_without_two_fields(small_corpus, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("spk00 spk00/utt00.wav\nspk00\n")
    code = cli_main(["train", "--train_list", str(bad), "--train_path", str(small_corpus / "wav"),
                     "--save_path", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    assert err.startswith("capsv train: error: ") and "bad.txt:2: expected 2 fields" in err


def test_all_missing_files_are_reported_before_training(small_corpus, tmp_path):
    listing = (small_corpus / "train.txt").read_text() + "spk00 gone/1.wav\nspk01 gone/2.wav\n"
    (tmp_path / "t.txt").write_text(listing)
    with pytest.raises(TrainDataError, match=r"(?s)2 of 20 files.*gone/1.wav.*gone/2.wav"):
        train(_args(small_corpus, tmp_path, train_list=str(tmp_path / "t.txt")))
    assert not os.listdir(tmp_path / "run" / "model")          # nothing was trained


def test_batch_larger_than_eligible_speakers(small_corpus, tmp_path):
    with pytest.raises(SamplerError, match=r"--batch_size 7 needs 7 distinct speakers.*only 6"):
        train(_args(small_corpus, tmp_path, batch_size=7))


@pytest.mark.parametrize("flag, value, valid", [
    ("model", "ResNet99", "ResNetSE34, ResNetSE34L"),
    ("encoder_type", "GAP", "CAP, SAP, TAP"),
    ("trainfunc", "ge2e", "aamsoftmax, amsoftmax, angleproto, proto, softmax, softmaxproto"),
])
def test_unknown_names_list_the_valid_ones(small_corpus, tmp_path, capsys, flag, value, valid):
    with pytest.raises(TrainError, match=f"unknown --{flag} '{value}'; choose one of: {valid}"):
        train(_args(small_corpus, tmp_path, **{flag: value}))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", f"--{flag}", value])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_unusable_test_list_fails_before_training(small_corpus, tmp_path):
    (tmp_path / "trials.txt").write_text("1 spk00/utt00.wav missing/x.wav\n0 spk00/utt00.wav spk01/utt00.wav\n")
    with pytest.raises(EvalInputError, match="missing/x.wav"):
        train(_args(small_corpus, tmp_path, test_list=str(tmp_path / "trials.txt"),
                    test_path=str(small_corpus / "wav")))
    assert not os.listdir(tmp_path / "run" / "model")


def test_cap_with_a_classification_loss_is_refused(small_corpus, tmp_path):
    with pytest.raises(CapsvError, match="trains with --trainfunc proto"):
        train(_args(small_corpus, tmp_path, encoder_type="CAP", trainfunc="softmax"))


def test_unknown_option_in_the_python_api(small_corpus, tmp_path):
    with pytest.raises(TrainError, match="unknown training option.*batchsize"):
        train(_args(small_corpus, tmp_path, batchsize=3))


def test_initial_model_then_no_op_when_max_epoch_reached(small_corpus, tmp_path, one_thread, capsys):
    first = train(_args(small_corpus, tmp_path))
    assert first.final_epoch == 1 and os.path.exists(first.checkpoint)
    again = train(_args(small_corpus, tmp_path))                 # same save_path, max_epoch 1
    assert again.epochs_run == 0 and again.resumed_from == first.checkpoint
    assert "nothing to do" in capsys.readouterr().out
    seeded = train(_args(small_corpus, tmp_path, save_path=str(tmp_path / "other"),
                         initial_model=first.checkpoint, max_epoch=1))
    assert seeded.resumed_from is None and seeded.final_epoch == 1
    assert f"initial weights from {first.checkpoint}" in capsys.readouterr().out


def test_a_broken_newest_checkpoint_is_skipped(small_corpus, tmp_path, one_thread, capsys):
    first = train(_args(small_corpus, tmp_path))
    broken = tmp_path / "run" / "model" / "model000000002.model"
    broken.write_bytes(b"half a checkpoint")                   # e.g. copied by hand, truncated
    summary = train(_args(small_corpus, tmp_path, max_epoch=2))
    out = capsys.readouterr().out
    assert "skipping unreadable checkpoint" in out and summary.resumed_from == first.checkpoint
    assert summary.final_epoch == 2
    assert torch.load(broken, weights_only=True)["meta"]["epoch"] == 2


def test_a_run_of_the_original_code_is_continued(reference_dir, small_corpus, tmp_path, one_thread,
                                                 capsys):
    """save_path/model holding the original's model%09d.model: its weights are loaded (its
    5994-row global_w does not fit 6 speakers and is skipped) and training goes on after it."""
    folder = tmp_path / "run" / "model"
    folder.mkdir(parents=True)
    (folder / "model000000005.model").write_bytes((reference_dir / "ResNetSE34L_TAP.model").read_bytes())
    summary = train(_args(small_corpus, tmp_path, nOut=512, global_clf=True, max_epoch=6))
    out = capsys.readouterr().out
    assert "resuming a reference-format run" in out and "global_w (5994, 512) ignored" in out
    assert summary.first_epoch == 6 and summary.final_epoch == 6
    assert (folder / "model000000005.model").exists()          # never deleted: not written by capsv


def test_continuing_a_run_with_another_objective_is_a_clear_error(small_corpus, tmp_path, one_thread):
    train(_args(small_corpus, tmp_path))
    with pytest.raises(TrainError, match=r"cannot continue this run with --global_clf False -> "
                                         r"True.*another --save_path"):
        train(_args(small_corpus, tmp_path, global_clf=True, max_epoch=2))


def test_augment_trains_with_the_real_augmenter(small_corpus, tmp_path, one_thread):
    """--augment through worker processes with capsv.data.augment (written on another branch;
    this runs once it is in the tree)."""
    pytest.importorskip("capsv.data.augment", reason="capsv.data.augment is not in this tree")
    import soundfile as sf

    rng = np.random.default_rng(0)
    for kind in ("noise", "speech", "music"):
        (tmp_path / "musan" / kind).mkdir(parents=True)
        sf.write(tmp_path / "musan" / kind / "a.wav", rng.normal(0, 2000, 32000).astype(np.int16), 16000)
    (tmp_path / "rirs").mkdir()
    decay = np.exp(-np.arange(2000) / 300.0)
    sf.write(tmp_path / "rirs" / "r.wav", (rng.normal(0, 1, 2000) * decay * 10000).astype(np.int16), 16000)
    summary = train(_args(small_corpus, tmp_path, augment=True, musan_path=str(tmp_path / "musan"),
                          rir_path=str(tmp_path / "rirs"), nDataLoaderThread=1))
    assert summary.final_epoch == 1 and np.isfinite(summary.loss)
