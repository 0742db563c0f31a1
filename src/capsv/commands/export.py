"""``capsv export``: ONNX or TorchScript graphs for deployment."""
from __future__ import annotations

import argparse

from ..models.checkpoint import is_capsv, load_model
from ..export import DEFAULT_OPSET, FORMATS, ONNX_EXPORTERS, STFT_MODES, export_model
from ..protocol import protocol_of
from .common import add_model_args

HELP = "export a checkpoint to ONNX or TorchScript"
DESCRIPTION = """\
Write deployable graphs of a checkpoint into --out DIR, plus export.json (inputs, outputs,
the whole recipe from audio to score: sample rate, int16 scale, crop length and padding
rule, number of crops, normalisation and scoring; the checkpoint's decision threshold, and
the largest difference from PyTorch measured on inputs of new sizes unless --no_check), and
for ONNX verify_onnx.py, a numpy + onnxruntime script that reproduces 'capsv verify'.

TAP/SAP: embedding.onnx (or .pt): waveform (batch, samples) -> embedding (batch, E).
CAP:     frames.onnx: waveform (batch, samples) -> frame features (batch, D, T), and
         cap_head.onnx: (support (Ns, D, Ts), query (Nq, D, Tq)) -> e_s, e_q (Nq, Ns, E), score.
Waveforms are float32 at 16 kHz on the int16 scale (-32768..32767), any batch and length.

ONNX front end (--stft): 'dft' (default) computes the STFT as a Conv1d with a DFT basis,
which any ONNX runtime runs (TensorRT and older opsets lack the STFT operator); 'native'
keeps torch.stft (ONNX STFT operator, opset 17+, torch.export-based exporter, slower).

examples:
  capsv export --format onnx --initial_model exps/cap/model/model000000050.model --out deploy/
  capsv export --format torchscript --initial_model tap.model --model ResNetSE34L --out deploy_ts/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="onnx", help="(default: %(default)s)")
    p.add_argument("--initial_model", required=True, help="checkpoint (capsv or the original code's)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_model_args(p, defaults=False)
    g = p.add_argument_group("ONNX")
    g.add_argument("--stft", choices=STFT_MODES, default="dft",
                   help="front-end STFT as a DFT Conv1d or the ONNX STFT operator (default: %(default)s)")
    g.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    g.add_argument("--onnx_exporter", choices=ONNX_EXPORTERS, default="auto",
                   help="torch exporter: auto = legacy (TorchScript-based) for --stft dft, "
                   "dynamo for --stft native (default: %(default)s)")
    g = p.add_argument_group("protocol written into export.json's recipe")
    g.add_argument("--eval_frames", type=int, default=None,
                   help="frames per crop; 0 = whole utterance (default: the protocol stored in "
                   "the checkpoint with its threshold, else 350)")
    g.add_argument("--num_eval", type=int, default=None,
                   help="crops per file (default: the checkpoint's protocol, else 10)")
    p.add_argument("--no_check", action="store_true",
                   help="skip running the exported graphs against PyTorch")
    p.add_argument("--config", help="YAML file of flag values; flags typed on the command line "
                   "win; a training config works (its training-only keys are ignored)")


def run(args: argparse.Namespace) -> int:
    net, ckpt = load_model(args.initial_model, args.model, args.encoder_type, args.nOut, device="cpu")
    meta = (ckpt.get("meta") or {}) if is_capsv(ckpt) else {}
    threshold = meta.get("eer_threshold")
    stored = protocol_of(meta, args.initial_model)   # the protocol the threshold belongs to
    eval_frames = stored.eval_frames if args.eval_frames is None else args.eval_frames
    num_eval = stored.num_eval if args.num_eval is None else args.num_eval
    manifest = export_model(net, args.out, args.format, stft=args.stft, opset=args.opset,
                            check=not args.no_check, threshold=threshold,
                            source=args.initial_model, exporter=args.onnx_exporter,
                            eval_frames=eval_frames, num_eval=num_eval)
    for name, entry in manifest["graphs"].items():
        diff = entry.get("max_abs_diff_vs_pytorch")
        note = f" (max |diff| vs PyTorch {diff:.2e})" if diff is not None else ""
        print(f"{name}: {args.out.rstrip('/')}/{entry['file']}{note}")
    print(f"manifest: {args.out.rstrip('/')}/export.json", flush=True)
    if args.format == "onnx":
        print(f"example: python {args.out.rstrip('/')}/verify_onnx.py a.wav b.wav "
              "(numpy + onnxruntime; reproduces capsv verify)", flush=True)
    return 0
