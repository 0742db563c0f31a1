"""Checkpoints: capsv's own format, and the reference code's bare state_dicts (spec §6).

capsv format (a plain dict, loadable with ``weights_only=True``)::

    {"format": "capsv", "format_version": 1, "capsv_version": "...",
     "model_config": {"model": ..., "encoder_type": ..., "nOut": ...},
     "model": <SpeakerNet state_dict>, "meta": {"epoch": ..., "train_list_sha256": ...},
     ... training state (optimizer, scheduler, loss, rng) when written by the trainer}

Reference format: ``torch.save(state_dict)`` with keys ``__S__.<name>`` (maybe behind
``module.``). Backbone names map to ``backbone.<name>``, head names to ``pooling.<name>``;
``global_w`` is the training-only classifier and the torchaudio buffers are dropped.
"""
from __future__ import annotations

import pickle
from typing import Any

import torch

from .. import __version__
from ..errors import CapsvError
from ..special_files import not_regular
from . import SpeakerNet
from ..utils import atomic_torch_save

FORMAT = "capsv"
FORMAT_VERSION = 1
POOLING_PARAM_ROOTS = {"fc", "sap_linear", "attention", "meta_learner", "att_bn"}
TRAINING_ONLY_ROOTS = {"global_w"}
DROPPED_PREFIXES = ("torchfb.", "instancenorm.")


class CheckpointError(CapsvError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def read_checkpoint(path: str) -> dict:
    """``torch.load(weights_only=True)`` with errors that name the file."""
    special = not_regular(path)
    if special:                       # opening a FIFO would block forever
        raise CheckpointError(f"{path}: is {special}, not a checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except pickle.UnpicklingError as exc:
        if not _looks_like_torch_file(path):     # text that happens to parse as pickle opcodes
            raise _not_a_checkpoint(path) from None
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and "
            f"plain containers, which could run code (weights_only=True). Re-save it as a "
            f"state_dict from a trusted source. Detail: {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        if not _looks_like_torch_file(path):
            raise _not_a_checkpoint(path) from None
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (torch.load failed: "
                              f"{detail})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: unknown checkpoint format (a {type(obj).__name__}, "
                              "expected a capsv checkpoint or a state_dict)")
    return obj


def _not_a_checkpoint(path: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive "
                           "nor a pickle); check the --initial_model path")


def _looks_like_torch_file(path: str) -> bool:
    """torch.save writes a zip archive (``PK``) or, in the legacy format, a pickle (``0x80``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head == b"PK" or head[:1] == b"\x80"


def is_capsv(obj: dict) -> bool:
    return obj.get("format") == FORMAT


def split_reference_state(state: dict) -> tuple[dict, dict]:
    """Reference state_dict -> (SpeakerNet state_dict, training-only tensors)."""
    model_state, training = {}, {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"unknown checkpoint format: entry '{key}' is not a tensor")
        name = key
        for prefix in ("module.", "__S__."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name.startswith(DROPPED_PREFIXES):
            continue
        root = name.split(".", 1)[0]
        if root in TRAINING_ONLY_ROOTS:
            training[name] = value
        elif root in POOLING_PARAM_ROOTS:
            model_state["pooling." + name] = value
        else:
            model_state["backbone." + name] = value
    return model_state, training


def load_state_strict(model: torch.nn.Module, state: dict, source: str) -> None:
    """Load every tensor or fail with the list of missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        cfg = getattr(model, "config", {})
        lines = [f"{source} does not fit the model {cfg}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatch", mismatched)):
            if items:
                shown = items[:20] + ([f"... {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
        lines.append("  Check --model, --encoder_type and --nOut against the checkpoint.")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def infer_reference_config(model_state: dict) -> dict:
    """Pooling and nOut as far as the tensors show them (the backbone cannot be told apart)."""
    if "pooling.meta_learner.0.weight" in model_state:
        encoder, n_out = "CAP", model_state["pooling.fc"].shape[0]
    elif "pooling.sap_linear.weight" in model_state:
        encoder, n_out = "SAP", model_state["pooling.fc.weight"].shape[0]
    elif "pooling.fc.weight" in model_state:
        encoder, n_out = "TAP", model_state["pooling.fc.weight"].shape[0]
    else:
        return {}
    return {"encoder_type": encoder, "nOut": int(n_out)}


def check_format(ckpt: dict, path: str) -> None:
    """A one-line error unless ``ckpt`` is a capsv checkpoint or a reference state_dict."""
    if is_capsv(ckpt):
        missing = [k for k in ("model_config", "model") if not isinstance(ckpt.get(k), dict)]
        if missing:
            raise CheckpointError(f"{path}: damaged capsv checkpoint (no {' or '.join(missing)})")
        return
    names = [str(k) for k in ckpt]
    if not any(n.startswith(("__S__.", "module.__S__.")) for n in names):
        shown = ", ".join(repr(n) for n in names[:3]) or "no entries"
        raise CheckpointError(f"{path}: unknown checkpoint format: neither a capsv checkpoint nor "
                              f"the original code's state_dict ('__S__.*' keys); found {shown}")


def load_model(path: str, model: str | None = None, encoder_type: str | None = None,
               nOut: int | None = None, device: str | torch.device = "cpu"):
    """Build a :class:`SpeakerNet` from any supported checkpoint; returns (net, checkpoint dict).

    A capsv checkpoint carries its config (flags given here must agree with it). A reference
    state_dict needs ``model``; ``encoder_type`` and ``nOut`` default to what its tensors show.
    """
    ckpt = read_checkpoint(path)
    check_format(ckpt, path)
    if is_capsv(ckpt):
        config = dict(ckpt["model_config"])
        for key, given in (("model", model), ("encoder_type", encoder_type), ("nOut", nOut)):
            if given is not None and given != config[key]:
                raise CheckpointError(f"{path}: checkpoint was trained with {key}={config[key]!r}, "
                                      f"but {given!r} was asked for; drop the flag or fix it")
        state = ckpt["model"]
    else:
        state, _ = split_reference_state(ckpt)
        inferred = infer_reference_config(state)
        if model is None:
            raise CheckpointError(f"{path}: a reference-format state_dict does not record its "
                                  "backbone; pass --model ResNetSE34L or --model ResNetSE34")
        config = {"model": model,
                  "encoder_type": encoder_type or inferred.get("encoder_type", "TAP"),
                  "nOut": nOut if nOut is not None else inferred.get("nOut", 512)}
    net = SpeakerNet(**config)
    load_state_strict(net, state, path)
    return net.to(device).eval(), ckpt


def save_checkpoint(path: str, net: SpeakerNet, meta: dict | None = None, **extra: Any) -> None:
    """Write a capsv checkpoint atomically (temp file + rename)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "capsv_version": __version__,
               "model_config": dict(net.config), "model": net.state_dict(), "meta": dict(meta or {})}
    payload.update(extra)
    atomic_torch_save(payload, path)
