"""Flags from YAML files: ``--config FILE.yaml`` supplies values, flags on the command line win.

Precedence, lowest first: the parser's defaults, the YAML file, flags typed on the command line.
YAML keys are flag names without dashes (``batch_size: 200``); an unknown key is an error.
One config serves a model's whole life: a training config given to ``eval``, ``verify``,
``embed`` or ``export`` supplies the keys that command has (model, encoder_type, nOut,
eval_frames ...) and its training-only keys (trainfunc, lr ...) are ignored, with a note.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

import yaml

from .errors import CapsvError


class ConfigError(CapsvError):
    pass


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of flag names to values")
    return data


def explicit_dests(add_arguments: Callable[[argparse.ArgumentParser], None], argv: list[str]) -> set[str]:
    """The destinations the user typed on the command line (defaults suppressed)."""
    twin = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    add_arguments(twin)
    for action in twin._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    namespace, _ = twin.parse_known_args(argv)
    return set(vars(namespace))


def apply_config(args: argparse.Namespace, parser: argparse.ArgumentParser,
                 add_arguments: Callable[[argparse.ArgumentParser], None], argv: list[str]) -> argparse.Namespace:
    """Fill ``args`` from ``args.config`` except where a flag was typed."""
    path = getattr(args, "config", None)
    if not path:
        return args
    data = load_yaml(path)
    known = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    aliases = {s.lstrip("-"): a.dest for a in parser._actions for s in a.option_strings}
    typed = explicit_dests(add_arguments, argv)
    foreign = _keys_of_other_commands(parser, data, aliases, known)
    if foreign:
        print(f"note: {path}: ignoring {', '.join(foreign)} (training keys that "
              f"{parser.prog} does not use)", file=sys.stderr, flush=True)
    for key, value in data.items():
        dest = aliases.get(key, key)
        if key in foreign:
            continue
        if dest not in known:
            raise ConfigError(f"{path}: unknown key '{key}'; valid keys: {', '.join(sorted(known))}")
        if dest in typed:
            continue
        action = known[dest]
        if action.type is not None and value is not None and not isinstance(value, bool):
            value = action.type(value)
        if action.choices is not None and value not in action.choices:
            raise ConfigError(f"{path}: {key}={value!r} is not one of {list(action.choices)}")
        setattr(args, dest, value)
    return args


def _keys_of_other_commands(parser: argparse.ArgumentParser, data: dict, aliases: dict,
                            known: dict) -> list[str]:
    """The keys of ``data`` that this command lacks but ``capsv train`` has: a training
    config used for evaluation, embedding or export. Other unknown keys stay errors."""
    unknown = [k for k in data if aliases.get(k, k) not in known]
    if not unknown:
        return []
    from .commands import train   # imported here: only a foreign key needs the train flags

    train_parser = argparse.ArgumentParser(add_help=False)
    train.add_arguments(train_parser)
    train_keys = {s.lstrip("-") for a in train_parser._actions for s in a.option_strings}
    train_keys |= {a.dest for a in train_parser._actions}
    return [k for k in unknown if k in train_keys]
