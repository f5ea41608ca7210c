"""Settings dataclasses as command-line flags and YAML keys: each setting is declared once.

A field carries its help text (and, where its type does not say it, its choices or its parser) in
its metadata, as PEFT's config classes do; ``add_flags`` makes the fields flags, and ``coerce``
turns what a flag or a YAML file gave into the field's type, naming the setting when it cannot.
The run config (run_config.py), the adapter settings (adapters/config.py) and the commands that
take them (train, count, estimate, plan, the benchmarks) all go through here, so a setting has one
name, one help text and one parser everywhere. Imports nothing of the package.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Callable

MISSING = dataclasses.MISSING


def setting(default: Any = MISSING, *, help: str, default_factory: Any = MISSING,
            choices: tuple[str, ...] | None = None, parse: Callable[[Any], Any] | None = None,
            nargs: str | None = None, flag: bool = True) -> Any:
    """A dataclass field with its help text. ``choices`` restricts a text setting; ``parse`` turns a
    flag's or YAML's value into the setting (raising ValueError with the fix); ``nargs`` for flags
    taking several words; ``flag=False`` keeps the setting out of the command line."""
    metadata = {"help": help, "choices": choices, "parse": parse, "nargs": nargs, "flag": flag}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def parse_bool(text) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _base_type(item: dataclasses.Field) -> tuple[str, bool]:
    """('int' | 'float' | 'bool' | 'str' | other, whether None is allowed) from the annotation."""
    kind = str(item.type)
    optional = kind.endswith(" | None")
    return kind.removesuffix(" | None"), optional


def add_flags(parser, cls, skip: tuple[str, ...] = (), suppress_defaults: bool = True,
              only: tuple[str, ...] | None = None) -> None:
    """Every field of dataclass ``cls`` (but ``skip``; of ``only`` where given) as a ``--name`` flag
    with its help.

    With ``suppress_defaults`` the namespace holds only what the user typed (so a caller can layer
    the flags over a YAML file); otherwise it holds the field defaults for the rest. Either way,
    pass the values through ``coerce`` (a setting of several words is parsed there, as a whole).
    """
    for item in dataclasses.fields(cls):
        meta = item.metadata
        if item.name in skip or not meta.get("flag", True) or "help" not in meta:
            continue
        if only is not None and item.name not in only:
            continue
        kwargs: dict[str, Any] = {"help": meta["help"]}
        if suppress_defaults:
            kwargs["default"] = argparse.SUPPRESS
        elif item.default is not MISSING:
            kwargs["default"] = item.default
        elif item.default_factory is not MISSING:
            kwargs["default"] = item.default_factory()
        base, _ = _base_type(item)
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("nargs"):
            kwargs["nargs"] = meta["nargs"]
        if meta.get("parse") is not None and not meta.get("nargs"):
            kwargs["type"] = _flag_parser(meta["parse"])  # (several words are parsed together, by coerce)
        elif base == "bool":
            kwargs.update(nargs="?", const=True, type=parse_bool)
        elif base == "int":
            kwargs["type"] = int
        elif base == "float":
            kwargs["type"] = float
        parser.add_argument(f"--{item.name}", **kwargs)


def _flag_parser(parse: Callable[[Any], Any]) -> Callable[[str], Any]:
    def parse_flag(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse_flag.__name__ = getattr(parse, "__name__", "value")
    return parse_flag


def coerce(cls, key: str, value):
    """``value`` as the type of ``cls``'s setting ``key``, or a ValueError naming the key.

    YAML hands over what it parsed: PyYAML reads ``lr: 1e-3`` as the string '1e-3' (YAML 1.1 wants
    a dot), so numbers written as text are accepted; ``model: 5`` is a number where a path is
    meant, refused with the fix rather than failing later inside a library.
    """
    item = {f.name: f for f in dataclasses.fields(cls)}[key]
    base, optional = _base_type(item)
    if value is None:
        if optional or item.default is None:
            return None
        raise ValueError(f"{key} needs a value (got nothing; in YAML, {key}: with no value is null)")
    parse = item.metadata.get("parse")
    if parse is not None:
        try:  # its messages name the setting
            return parse(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
            raise ValueError(str(err)) from None
    if base == "bool":
        try:
            return parse_bool(value)
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"{key}: {err}") from None
    if base in ("float", "int"):
        return _number(key, value, base)
    if base == "str":
        if not isinstance(value, str):
            raise ValueError(f"{key} must be text, got {value!r} ({type(value).__name__}); in YAML, quote it: "
                             f"{key}: \"{value}\"")
        if not value.strip():
            raise ValueError(f"{key} is empty; give a value or leave the setting out for its default")
        choices = item.metadata.get("choices")
        if choices and value not in choices:
            raise ValueError(f"unknown {key} {value!r}: use one of {', '.join(choices)}")
        return value
    return value


def _number(key: str, value, base: str):
    if isinstance(value, bool):
        raise ValueError(f"{key} must be a number, got {value!r}")
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    if isinstance(number, (int, float)):
        if base == "float":
            return float(number) if isinstance(value, str) else number
        if isinstance(number, int) or (math.isfinite(number) and float(number).is_integer()):
            return int(number)
    raise ValueError(f"{key} must be {'a whole number' if base == 'int' else 'a number'}, got {value!r}")
