"""The training recipes compared in bench/learning (flags of ``capsv train``).

Every run: ResNetSE34L, the real-voice dev corpus, one thread, a budget of processor time
(``--budget_clock cpu``, crops read in the training process so all of it is counted).
"""
from __future__ import annotations

# The paper's recipe (configs/ResNetSE34L_*.yaml): 200 speakers x 3 utterances of 2 s crops,
# SGD 0.1 with ReduceLROnPlateau, NP loss + global classifier. The dev corpus has 156 training
# ids, so a batch holds 100 of them.
PAPER = ["--batch_size", "100", "--nSpeakers", "3", "--max_frames", "200", "--optimizer", "sgd",
         "--lr", "0.1", "--trainfunc", "proto", "--global_clf"]

# Short-budget candidates. Each differs from "quick" in one thing where possible.
QUICK = ["--batch_size", "32", "--nSpeakers", "2", "--max_frames", "100", "--optimizer", "adam",
         "--lr", "0.002", "--weight_decay", "0", "--lr_schedule", "cosine", "--warmup", "0.05",
         "--final_lr", "0.02", "--trainfunc", "proto", "--global_clf", "--max_seg_per_spk", "500"]


def _with(base: list[str], **changes) -> list[str]:
    """``base`` with flags replaced (``flag=value``; ``flag=None`` drops a boolean flag)."""
    out, i = [], 0
    while i < len(base):
        name = base[i][2:]
        takes_value = i + 1 < len(base) and not base[i + 1].startswith("--")
        if name in changes:
            value = changes.pop(name)
            if value is not None:
                out += [base[i]] + ([str(value)] if takes_value else [])
        else:
            out += base[i:i + 2] if takes_value else [base[i]]
        i += 2 if takes_value else 1
    for name, value in changes.items():
        if value is not None:
            out += [f"--{name}"] + ([] if value is True else [str(value)])
    return out


# The shipped short-budget recipe (configs/cpu_quick_{CAP,TAP}.yaml).
RECIPE = _with(QUICK, lr=0.005)

VARIANTS = {
    "recipe": RECIPE,
    "paper": PAPER,
    "quick": QUICK,
    "quick-crop50": _with(QUICK, max_frames=50),
    "quick-crop200": _with(QUICK, max_frames=200),
    "quick-b64": _with(QUICK, batch_size=64),
    "quick-n3": _with(QUICK, nSpeakers=3),
    "quick-lr5e-3": _with(QUICK, lr=0.005),
    "quick-noclf": _with(QUICK, global_clf=None),
    "quick-clf0.3": _with(QUICK, global_clf_weight=0.3),
    "quick-plateau": _with(QUICK, lr_schedule="plateau", patience=2),
    "quick-aam": _with(QUICK, trainfunc="aamsoftmax", global_clf=None, nSpeakers=1,
                       batch_size=96, margin=0.2, scale=30),
}
