"""``capsv`` command line: a dispatcher over :mod:`capsv.commands` (the logic is in the library)."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import warnings
from contextlib import contextmanager

from . import __version__
from .config import apply_config
from .errors import CapsvError, os_error_message

# subcommand -> module in capsv.commands (imported lazily so `capsv --help` stays fast)
COMMANDS = {
    "eval": "eval",
    "train": "train",
    "prepare": "prepare",
    "verify": "verify",
    "embed": "embed",
    "score": "score",
    "export": "export",
    "synth": "synth",
    "demo": "demo",
}


def _load(name: str):
    return importlib.import_module(f"capsv.commands.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capsv", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Speaker verification with Cross Attentive Pooling (CAP).",
        epilog="Run 'capsv <command> --help' for the flags of each command.")
    parser.add_argument("--version", action="version", version=f"capsv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        module = _load(name)
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
    return parser


def run_command(name: str, argv: list[str], prog: str | None = None) -> int:
    """Parse ``argv`` for one subcommand (config file applied) and run it."""
    module = _load(name)
    parser = argparse.ArgumentParser(prog=prog or f"capsv {name}",
                                     description=getattr(module, "DESCRIPTION", module.HELP),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args = apply_config(args, parser, module.add_arguments, argv)
        check_flag_ranges(args)
        from .audio import reset_rate_warnings, strict_audio
        reset_rate_warnings()
        with _plain_warnings(parser.prog), strict_audio(bool(getattr(args, "strict_audio", False))):
            return int(module.run(args) or 0)
    except CapsvError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The safety net: a full or read-only disk, a file where a folder belongs, a symlink
        # loop... anywhere nothing more specific caught it: one line, never a traceback.
        print(f"{parser.prog}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # The process is on its way out: one more Ctrl-C must not turn the exit into a
        # traceback (e.g. from an atexit hook) after the message below.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # capsv.train.TrainInterrupted says which checkpoint to continue from and carries
        # the shell's code for the signal (130 SIGINT, 143 SIGTERM); a bare Ctrl-C is 130.
        print(f"{parser.prog}: {str(exc) or 'interrupted'}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


# flags several commands share -> (smallest value allowed, what the flag means)
FLAG_MINIMUMS = {
    "num_eval": (1, "crops per file"),
    "eval_frames": (0, "frames per evaluation crop; 0 = the whole utterance"),
}


def check_flag_ranges(args: argparse.Namespace) -> None:
    """Refuse out-of-range values of the shared numeric flags (typed or from --config)."""
    for dest, (smallest, meaning) in FLAG_MINIMUMS.items():
        value = getattr(args, dest, None)
        if isinstance(value, int) and value < smallest:
            raise CapsvError(f"--{dest} must be {smallest} or more ({meaning}), got {value}")


@contextmanager
def _plain_warnings(prog: str):
    """Python warnings (resampled or downmixed audio, short inputs) as 'capsv verify:
    warning: ...' lines on stderr, without the source line of the code that warned."""
    before = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"{prog}: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = before


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--version"):
        parser = build_parser()
        if not argv:
            parser.print_help()
            return 0
        parser.parse_args(argv)
        return 0
    if argv[0] not in COMMANDS:
        build_parser().error(f"unknown command '{argv[0]}'; choose one of: {', '.join(COMMANDS)}")
    return run_command(argv[0], argv[1:])


def legacy_main(argv: list[str] | None = None) -> int:
    """``python trainSpeakerNet.py`` with the seed README's flags: ``--eval`` evaluates, else trains."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--eval" in argv:
        argv.remove("--eval")
        name = "eval"
    else:
        name = "train"
    if name not in COMMANDS:
        print(f"trainSpeakerNet.py: '{name}' is not available in this version", file=sys.stderr)
        return 2
    if name == "eval" and "train" in COMMANDS:
        argv = _config_as_flags(argv)
        argv = _with_run_checkpoint(argv)
        argv = _train_flags_dropped(argv)
    return run_command(name, argv, prog="trainSpeakerNet.py")


def _config_as_flags(argv: list[str]) -> list[str]:
    """A training --config file holds keys eval does not know: spell its entries as flags
    placed before the typed ones (so typed flags still win) and drop --config."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--config")
    known, rest = probe.parse_known_args(argv)
    if not known.config:
        return argv
    from .config import load_yaml

    train_parser = argparse.ArgumentParser(add_help=False)
    _load("train").add_arguments(train_parser)
    actions = {s.lstrip("-"): a for a in train_parser._actions for s in a.option_strings}
    flags = []
    for key, value in load_yaml(known.config).items():
        action = actions.get(key)
        if action is None or value is None:
            continue                     # unknown keys are the training command's to report
        if action.nargs == 0:
            flags += [action.option_strings[0]] if value else []
        else:
            flags += [action.option_strings[0], str(value)]
    return flags + rest


def _with_run_checkpoint(argv: list[str]) -> list[str]:
    """Like the original ``--eval``: without --initial_model, use the newest checkpoint of
    --save_path (the original loads it before evaluating)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--initial_model", default="")
    probe.add_argument("--save_path", default="")
    known, _ = probe.parse_known_args(argv)
    if known.initial_model or not known.save_path:
        return argv
    from .train import list_checkpoints

    found = list_checkpoints(known.save_path)
    return argv + ["--initial_model", found[0][1]] if found else argv


def _train_flags_dropped(argv: list[str]) -> list[str]:
    """Drop flags that only training uses, so a training command + --eval evaluates."""
    eval_parser = argparse.ArgumentParser(add_help=False)
    _load("eval").add_arguments(eval_parser)
    train_parser = argparse.ArgumentParser(add_help=False)
    _load("train").add_arguments(train_parser)
    eval_flags = {s for a in eval_parser._actions for s in a.option_strings}
    takes_value = {s: a.nargs != 0 for a in train_parser._actions for s in a.option_strings}
    kept, i = [], 0
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        if flag.startswith("--") and flag not in eval_flags and flag in takes_value:
            i += 1 + (takes_value[flag] and "=" not in argv[i])
            continue
        kept.append(argv[i])
        i += 1
    return kept


if __name__ == "__main__":
    sys.exit(main())
