"""Export: the DFT front end, ONNX graphs run in onnxruntime, TorchScript, all against PyTorch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from capsv import cli
from capsv.models.checkpoint import load_model
from capsv.export import CAPHead, DFTLogMelFrontEnd, export_model, export_torchscript
from capsv.models.features import LogMelFrontEnd

A, B = "id10003/vidC/00003.wav", "id10002/vidB/00002.wav"     # the debug tensors' trial


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nets(reference_dir):
    return {enc: load_model(str(reference_dir / f"ResNetSE34L_{enc}.model"), "ResNetSE34L")[0]
            for enc in ("TAP", "CAP")}


def test_dft_front_end_matches_stft_front_end(reference_dir):
    stft = LogMelFrontEnd()
    dft = DFTLogMelFrontEnd(stft)
    crops = torch.from_numpy(np.load(reference_dir / "debug" / "input_A.npy").astype(np.float32))
    reference = np.load(reference_dir / "debug" / "logmel_A.npy")
    with torch.no_grad():
        ours = dft(crops)
        np.testing.assert_allclose(ours.numpy(), reference, rtol=0, atol=1e-4)
        torch.testing.assert_close(ours, stft(crops), rtol=0, atol=1e-4)
        gen = torch.Generator().manual_seed(0)   # odd length, silence at both ends
        wave = torch.cat([torch.zeros(2, 777), torch.randn(2, 12_345, generator=gen) * 2000,
                          torch.zeros(2, 301)], dim=1)
        torch.testing.assert_close(dft(wave), stft(wave), rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def onnx_dirs(reference_dir, tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="onnxruntime (optional extra 'export') is not installed")
    pytest.importorskip("onnx", reason="onnx (optional extra 'export') is not installed")
    out = {}
    for enc in ("TAP", "CAP"):
        out[enc] = tmp_path_factory.mktemp(f"onnx_{enc}")
        code = cli.main(["export", "--format", "onnx", "--initial_model",
                         str(reference_dir / f"ResNetSE34L_{enc}.model"), "--model", "ResNetSE34L",
                         "--out", str(out[enc]), "--no_check"])
        assert code == 0
    return out


def test_onnx_tap_embedding_matches_pytorch(onnx_dirs, nets):
    from capsv.export import run_onnx
    manifest = json.loads((onnx_dirs["TAP"] / "export.json").read_text())
    assert list(manifest["graphs"]) == ["embedding"] and manifest["stft"] == "dft"
    assert manifest["graphs"]["embedding"]["inputs"] == {"waveform": ["batch", "samples"]}
    gen = torch.Generator().manual_seed(1)
    for shape in [(3, 23_456), (1, 56_240)]:             # other sizes than the export example
        wave = torch.randn(*shape, generator=gen) * 3000
        (got,) = run_onnx(str(onnx_dirs["TAP"] / "embedding.onnx"), {"waveform": wave.numpy()})
        with torch.no_grad():
            expected = nets["TAP"].embed(wave).numpy()
        assert got.shape == expected.shape == (shape[0], 512)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_onnx_cap_graphs_match_pytorch_and_reference_score(onnx_dirs, nets, reference_dir):
    from capsv.export import run_onnx
    net = nets["CAP"]
    crops = {k: np.load(reference_dir / "debug" / f"input_{k}.npy").astype(np.float32) for k in "AB"}
    frames = {k: run_onnx(str(onnx_dirs["CAP"] / "frames.onnx"), {"waveform": crops[k]})[0] for k in "AB"}
    with torch.no_grad():
        torch_frames = {k: net.frames(torch.from_numpy(crops[k])) for k in "AB"}
    for k in "AB":
        np.testing.assert_allclose(frames[k], torch_frames[k].numpy(), rtol=0, atol=1e-4)
    e_s, e_q, score = run_onnx(str(onnx_dirs["CAP"] / "cap_head.onnx"),
                               {"support": frames["A"], "query": frames["B"]})
    with torch.no_grad():
        ref_s, ref_q = net.pooling(torch_frames["A"], torch_frames["B"])
    assert e_s.shape == (10, 10, 512)
    np.testing.assert_allclose(e_s, ref_s.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(e_q, ref_q.numpy(), rtol=0, atol=1e-4)
    lines = (reference_dir / "ResNetSE34L_CAP.scores.txt").read_text().splitlines()
    expected = next(float(l.split()[3]) for l in lines if l.split()[1:3] == [A, B])
    assert float(score) == pytest.approx(expected, abs=1e-5)
    # other crop counts and lengths on each side
    e_s, _, _ = run_onnx(str(onnx_dirs["CAP"] / "cap_head.onnx"),
                         {"support": frames["A"][:3, :, :40], "query": frames["B"][:2]})
    with torch.no_grad():
        ref_s, _ = net.pooling(torch_frames["A"][:3, :, :40], torch_frames["B"][:2])
    np.testing.assert_allclose(e_s, ref_s.numpy(), rtol=0, atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_export_matches_pytorch(nets, tmp_path):
    manifest = export_model(nets["TAP"], str(tmp_path / "tap"), "torchscript", check=True)
    assert manifest["graphs"]["embedding"]["max_abs_diff_vs_pytorch"] <= 1e-5
    module = torch.jit.load(str(tmp_path / "tap" / "embedding.pt"))
    wave = torch.randn(2, 30_000, generator=torch.Generator().manual_seed(2)) * 3000
    with torch.no_grad():
        torch.testing.assert_close(module(wave), nets["TAP"].embed(wave), rtol=0, atol=1e-5)
    # the CAP pair head traced on one size, run on others
    head = CAPHead(nets["CAP"].pooling).eval()
    gen = torch.Generator().manual_seed(3)
    frames = lambda n, t: torch.randn(n, 128, t, generator=gen).relu()
    export_torchscript(head, (frames(2, 20), frames(3, 17)), str(tmp_path / "head.pt"))
    traced = torch.jit.load(str(tmp_path / "head.pt"))
    support, query = frames(4, 31), frames(1, 9)
    with torch.no_grad():
        for got, expected in zip(traced(support, query), head(support, query)):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_onnx_native_stft_via_dynamo(nets, tmp_path):
    """The ONNX STFT operator path (torch.export-based exporter; minutes on a small CPU)."""
    pytest.importorskip("onnxscript", reason="onnxscript is not installed")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    manifest = export_model(nets["TAP"], str(tmp_path), "onnx", stft="native", check=True)
    assert manifest["onnx_exporter"] == "dynamo"
    assert manifest["graphs"]["embedding"]["max_abs_diff_vs_pytorch"] <= 1e-4


@pytest.mark.parametrize("encoder", ["TAP", "CAP"])
def test_exported_example_script_reproduces_capsv_verify(onnx_dirs, reference_dir, encoder, capsys):
    """verify_onnx.py, copied beside the graphs, runs with numpy + onnxruntime only (capsv and
    torch blocked) and prints capsv verify's score within 1e-4, following export.json."""
    import subprocess
    import sys
    folder = onnx_dirs[encoder]
    manifest = json.loads((folder / "export.json").read_text())
    recipe = manifest["recipe"]
    assert recipe["sample_rate"] == 16000 and recipe["crop_samples"] == 56240
    assert recipe["num_crops"] == 10 and "floor((crop - n + 1) / 2)" in recipe["crops"]
    assert ("unit length" in recipe["scoring"]) == (encoder == "TAP")
    wav = reference_dir / "wav"
    runner = ("import runpy, sys; sys.modules['capsv'] = None; sys.modules['torch'] = None; "
              "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-I", "-c", runner, str(folder / "verify_onnx.py"),
                           str(wav / A), str(wav / B)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    onnx_score = float(done.stdout.split()[1])
    code = cli.main(["verify", str(wav / A), str(wav / B), "--initial_model",
                     str(reference_dir / f"ResNetSE34L_{encoder}.model"), "--model", "ResNetSE34L",
                     "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert onnx_score == pytest.approx(float(out.split()[1]), abs=1e-4)
