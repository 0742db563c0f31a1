"""Deployment export: ONNX or TorchScript graphs of a trained model.

What is exported (every waveform input is float32 at 16 kHz **on the int16 scale**, shape
(batch, samples), any batch size and length):

- TAP/SAP: ``embedding``: waveform -> embedding (batch, E), one per input waveform
  (not normalised: the pooling layer's output, as the network computes it). The evaluation
  protocol's score of two files is the dot product of the means of their crops' unit-length
  embeddings.
- CAP: two graphs, because CAP pools each pair jointly:
  ``frames``: waveform -> frame features (batch, D, T);
  ``cap_head``: (support (Ns, D, Ts), query (Nq, D, Tq)) -> e_s, e_q (Nq, Ns, E) and
  ``score``, the mean over the Nq x Ns pairs of cos(e_s, e_q). Run ``frames`` once per file
  (10 crops), then ``cap_head`` per trial: that is the ``capsv eval`` score.

The front end's STFT: ``stft="dft"`` (default) computes it as a strided Conv1d with a
windowed DFT basis, which every ONNX runtime supports (TensorRT and older opsets have no
STFT operator) and which matches ``torch.stft`` to float rounding; ``stft="native"`` keeps
``torch.stft`` (ONNX ``STFT``, opset 17+). TorchScript always keeps ``torch.stft``.

``export_model`` writes the graph files, ``export.json`` (inputs, outputs, the whole
recipe from audio to score under "recipe", threshold, and the measured difference from
PyTorch when a check ran) and, for ONNX, ``verify_onnx.py``: a numpy + onnxruntime script
that follows the recipe and reproduces ``capsv verify`` (:mod:`capsv.onnx_verify`).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import __version__
from .protocol import EVAL_FRAMES, HOP, NUM_EVAL, SAMPLE_RATE, WINDOW_EXTRA, crop_samples
from .errors import CapsvError
from .models.features import LogMelFrontEnd
from .models import SpeakerNet
from .utils import atomic_path, atomic_write_text

FORMATS = ("onnx", "torchscript")
ONNX_EXPORTERS = ("auto", "legacy", "dynamo")
STFT_MODES = ("dft", "native")
DEFAULT_OPSET = 18


class ExportError(CapsvError):
    pass


class DFTLogMelFrontEnd(nn.Module):
    """:class:`~capsv.models.features.LogMelFrontEnd` with the STFT as a Conv1d over a DFT basis.

    Same input and output: waveform (B, samples), int16 scale -> (B, n_mels, frames).
    Reflect padding by n_fft/2, then a Conv1d whose 2 * (n_fft/2 + 1) kernels are the
    window-weighted cosines and sines (the window zero-padded to n_fft in the middle, as
    torch.stft does), stride = hop.
    """

    def __init__(self, frontend: LogMelFrontEnd):
        super().__init__()
        n_fft, win = frontend.n_fft, frontend.win_length
        self.n_fft, self.hop_length = n_fft, frontend.hop_length
        self.floor, self.norm_eps = frontend.floor, frontend.norm_eps
        window = torch.zeros(n_fft, dtype=torch.float64)
        left = (n_fft - win) // 2
        window[left:left + win] = frontend.window.double()
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64).unsqueeze(1)
        angle = 2 * math.pi * ((k * n) % n_fft) / n_fft    # exact phase before the cosine
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])
        self.register_buffer("basis", basis.float().unsqueeze(1), persistent=False)   # (2F, 1, n_fft)
        self.register_buffer("mel_fb", frontend.mel_fb.clone(), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        half = self.n_fft // 2
        padded = F.pad(wave.unsqueeze(1), (half, half), mode="reflect")
        spec = F.conv1d(padded, self.basis, stride=self.hop_length)      # (B, 2F, frames)
        real, imag = spec.chunk(2, dim=1)
        power = real * real + imag * imag
        mel = torch.matmul(power.transpose(1, 2), self.mel_fb).transpose(1, 2)
        return F.instance_norm(torch.log(mel + self.floor), eps=self.norm_eps)


class _WaveGraph(nn.Module):
    """waveform -> frame features (``embed=False``) or embeddings (TAP/SAP, ``embed=True``)."""

    def __init__(self, net: SpeakerNet, frontend: nn.Module, embed: bool):
        super().__init__()
        self.frontend, self.backbone, self.embed = frontend, net.backbone, embed
        self.pooling = net.pooling if embed else None

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        frames = self.backbone(self.frontend(wave).unsqueeze(1))
        return self.pooling(frames) if self.embed else frames


class CAPHead(nn.Module):
    """(support (Ns, D, Ts), query (Nq, D, Tq)) -> (e_s, e_q (Nq, Ns, E), score ())."""

    def __init__(self, pooling: nn.Module):
        super().__init__()
        self.pooling = pooling

    def forward(self, support: torch.Tensor, query: torch.Tensor):
        e_s, e_q = self.pooling(support, query)
        score = (F.normalize(e_s, dim=-1) * F.normalize(e_q, dim=-1)).sum(-1).mean()
        return e_s, e_q, score


def graphs_for(net: SpeakerNet, stft: str = "dft") -> dict[str, tuple[nn.Module, tuple, dict]]:
    """name -> (module, example inputs, spec) of the graphs to export for this model."""
    if stft not in STFT_MODES:
        raise ExportError(f"unknown --stft {stft!r}; choose one of {', '.join(STFT_MODES)}")
    net = net.eval()
    frontend = DFTLogMelFrontEnd(net.frontend) if stft == "dft" else net.frontend
    wave = torch.randn(2, crop_samples(100)) * 3000
    wave_spec = {"inputs": {"waveform": ["batch", "samples"]}}
    if not net.pairwise:
        return {"embedding": (_WaveGraph(net, frontend, embed=True).eval(), (wave,),
                              {**wave_spec, "outputs": {"embedding": ["batch", net.config["nOut"]]}})}
    d = net.backbone.out_channels
    with torch.no_grad():
        frames = _WaveGraph(net, net.frontend, embed=False).eval()(wave)
    return {
        "frames": (_WaveGraph(net, frontend, embed=False).eval(), (wave,),
                   {**wave_spec, "outputs": {"frames": ["batch", d, "frames"]}}),
        "cap_head": (CAPHead(net.pooling).eval(), (frames, frames[:1, :, :-3].contiguous()),
                     {"inputs": {"support": ["n_support", d, "support_frames"],
                                 "query": ["n_query", d, "query_frames"]},
                      "outputs": {"e_s": ["n_query", "n_support", net.config["nOut"]],
                                  "e_q": ["n_query", "n_support", net.config["nOut"]],
                                  "score": []}}),
    }


def _dynamic_shapes(spec: dict) -> tuple:
    """Every named axis of each input is dynamic (Dim.DYNAMIC lets torch.export add the guards
    it needs, e.g. at least 257 samples for the STFT's reflect padding)."""
    return tuple({i: torch.export.Dim.DYNAMIC for i, a in enumerate(axes) if isinstance(a, str)}
                 for axes in spec["inputs"].values())


def pick_exporter(exporter: str, stft: str) -> str:
    """``auto``: the TorchScript-based ("legacy") exporter for the DFT front end (seconds for a
    ResNet, where the torch.export-based "dynamo" one takes minutes on a small CPU); dynamo for
    ``torch.stft``, whose complex output the legacy exporter cannot translate."""
    if exporter not in ONNX_EXPORTERS:
        raise ExportError(f"unknown ONNX exporter {exporter!r}; choose one of {', '.join(ONNX_EXPORTERS)}")
    if stft == "native" and exporter == "legacy":
        raise ExportError("--stft native needs --onnx_exporter dynamo (the legacy exporter "
                          "cannot translate torch.stft's complex output)")
    if exporter == "auto":
        return "dynamo" if stft == "native" else "legacy"
    return exporter


def export_onnx(module: nn.Module, example: tuple, spec: dict, path: str,
                opset: int = DEFAULT_OPSET, exporter: str = "legacy") -> None:
    """One graph to ONNX with every named axis dynamic, by the "legacy" or "dynamo" exporter."""
    try:
        import onnx  # noqa: F401  (both exporters need it)
    except ImportError:
        raise ExportError("ONNX export needs the optional package onnx "
                          "(from the capsv checkout: pip install -e '.[export]')") from None
    inputs, outputs = list(spec["inputs"]), list(spec["outputs"])
    with warnings.catch_warnings(), torch.no_grad(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            axes = {name: {i: a for i, a in enumerate(dims) if isinstance(a, str)}
                    for name, dims in {**spec["inputs"], **spec["outputs"]}.items()}
            torch.onnx.export(module, example, tmp, dynamo=False, opset_version=opset,
                              input_names=inputs, output_names=outputs, dynamic_axes=axes)
        elif exporter == "dynamo":
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                raise ExportError("--onnx_exporter dynamo needs onnxscript (pip install onnxscript)") from None
            program = torch.onnx.export(module, example, dynamo=True, opset_version=opset,
                                        input_names=inputs, output_names=outputs,
                                        dynamic_shapes=_dynamic_shapes(spec), verbose=False)
            program.save(tmp, external_data=False)
        else:
            raise ExportError(f"unknown ONNX exporter {exporter!r}; choose legacy or dynamo")


def export_torchscript(module: nn.Module, example: tuple, path: str) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, tmp)


def run_onnx(path: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run an exported graph with onnxruntime on CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("running ONNX graphs needs onnxruntime (from the capsv checkout: pip install -e '.[export]')") from None
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def _check_inputs(name: str, net: SpeakerNet) -> tuple:
    """Inputs of other sizes than the export examples, to prove the axes are dynamic."""
    gen = torch.Generator().manual_seed(0)
    wave = torch.randn(3, 23_456, generator=gen) * 3000
    if name != "cap_head":
        return (wave,)
    with torch.no_grad():
        frames = net.frames(wave)
    return frames[:2], frames[2:, :, :-5].contiguous()


def check_export(name: str, path: str, fmt: str, net: SpeakerNet) -> float:
    """Largest |exported - PyTorch| over every output, on inputs of new sizes."""
    inputs = _check_inputs(name, net)
    module = graphs_for(net, "native")[name][0]          # the reference: capsv's own front end
    with torch.no_grad():
        expected = module(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    if fmt == "onnx":
        names = list(graphs_for(net)[name][2]["inputs"])
        got = run_onnx(path, {n: x.numpy() for n, x in zip(names, inputs)})
    else:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")      # torch.jit is deprecated, still supported
            got = torch.jit.load(path)(*inputs)
        got = [g.numpy() for g in (got if isinstance(got, tuple) else (got,))]
    return max(float(np.abs(np.asarray(g) - e.numpy()).max()) for g, e in zip(got, expected))


def recipe(pairwise: bool, eval_frames: int = EVAL_FRAMES, num_eval: int = NUM_EVAL) -> dict:
    """From audio files to a score with the exported graphs, as ``capsv verify`` does it."""
    whole = eval_frames <= 0
    steps = {
        "sample_rate": SAMPLE_RATE,
        "audio": "decode, average the channels to mono, resample to 16 kHz (capsv uses "
                 "libswresample through PyAV)",
        "input_scale": "float32 on the int16 scale: PCM16 values as they are, float audio in "
                       "[-1, 1] times 32768",
        "eval_frames": eval_frames,
        "crop_samples": 0 if whole else crop_samples(eval_frames),
        "num_crops": 1 if whole else num_eval,
        "crops": ("the whole file as one crop (batch 1), no padding" if whole else
                  f"crop = eval_frames * {HOP} + {WINDOW_EXTRA} samples; a file of n <= crop samples is "
                  f"zero-padded by floor((crop - n + 1) / 2) on both sides (the paper's rule); "
                  f"crop starts = int(linspace(0, padded_length - crop, num_crops)); "
                  f"the crops form one batch (num_crops, crop)"),
        "short_files": "files much shorter than a crop are mostly zeros after padding and "
                       "score badly; eval_frames 0 (whole files) avoids it",
    }
    if pairwise:
        steps["scoring"] = ("frames graph on each file's crops -> (num_crops, D, T); cap_head("
                            "support = file 1's frames, query = file 2's frames) -> score "
                            "(the mean over crop pairs of cos(e_s, e_q)); there is no "
                            "single-file embedding: CAP pools each pair jointly")
    else:
        steps["scoring"] = ("embedding graph on each file's crops -> (num_crops, E); scale every "
                            "row to unit length; file vector = mean of the rows; score = dot "
                            "product of the two file vectors (= the mean of the num_crops x "
                            "num_crops crop cosines). capsv embed stores the file vector scaled "
                            "to unit length (cosine scoring) plus its length ('norms')")
    steps["example"] = "verify_onnx.py in this folder (numpy + onnxruntime) follows this recipe"
    return steps


def export_model(net: SpeakerNet, out_dir: str, fmt: str = "onnx", stft: str = "dft",
                 opset: int = DEFAULT_OPSET, check: bool = True, threshold: float | None = None,
                 source: str | None = None, exporter: str = "auto", eval_frames: int = EVAL_FRAMES,
                 num_eval: int = NUM_EVAL) -> dict:
    """Export every graph of ``net`` into ``out_dir``; returns (and writes) the manifest.

    ``eval_frames`` and ``num_eval``: the protocol written into the manifest's recipe."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    net = net.cpu().eval()
    os.makedirs(out_dir, exist_ok=True)
    manifest = {"capsv_version": __version__, "format": fmt, "model_config": dict(net.config),
                "source_checkpoint": source, "sample_rate": SAMPLE_RATE,
                "input_scale": "int16 (float32 values -32768..32767, not divided by 32768)",
                "protocol": (f"{num_eval} crops of {crop_samples(eval_frames)} samples "
                             f"({eval_frames} frames) per file, see recipe" if eval_frames > 0
                             else "whole files, see recipe"),
                "recipe": recipe(net.pairwise, eval_frames, num_eval),
                "eer_threshold": threshold, "graphs": {}}
    if fmt != "onnx":
        manifest["recipe"]["example"] = ("capsv.onnx_verify (for ONNX exports) shows the recipe "
                                         "in numpy")
    if fmt == "onnx":
        exporter = pick_exporter(exporter, stft)
        manifest.update({"stft": stft, "opset": opset, "onnx_exporter": exporter})
    ext = ".onnx" if fmt == "onnx" else ".pt"
    for name, (module, example, spec) in graphs_for(net, stft if fmt == "onnx" else "native").items():
        path = os.path.join(out_dir, name + ext)
        if fmt == "onnx":
            export_onnx(module, example, spec, path, opset, exporter)
        else:
            export_torchscript(module, example, path)
        entry = {"file": os.path.basename(path), **spec}
        if check and (fmt != "onnx" or _has_onnxruntime()):
            entry["max_abs_diff_vs_pytorch"] = check_export(name, path, fmt, net)
        manifest["graphs"][name] = entry
    atomic_write_text(os.path.join(out_dir, "export.json"), json.dumps(manifest, indent=2) + "\n")
    if fmt == "onnx":
        with atomic_path(os.path.join(out_dir, "verify_onnx.py")) as tmp:
            shutil.copyfile(os.path.join(os.path.dirname(__file__), "onnx_verify.py"), tmp)
    return manifest


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
