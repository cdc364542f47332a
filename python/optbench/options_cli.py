"""The command line's options, derived from the fields of an :class:`~optbench.options.Options`
class: one ``--flag`` per field (``--no-NAME`` for a boolean that is on by default), parsed and
checked as the field declares, so argparse names the flag in every error."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Callable
from typing import Any, Literal

from optbench.options import RENAMED_VALUES, Options, OptionsT, field_hints, is_union, shown_value, field_problem


def _cli_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at column {e.colno}): {text!r}") from None


def _cli_parser(tp: Any) -> Callable[[str], Any]:
    """How the command line turns a string into a value of ``tp``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if is_union(tp) else [tp]
    if str in args:
        return str
    core = args[0] if len(args) == 1 else tp
    origin = typing.get_origin(core)
    if core is int:
        return int
    if core is float:
        return float
    if origin is list and typing.get_args(core) == (str,):
        return lambda s: [x.strip() for x in s.split(",") if x.strip()]
    if origin in (dict, list) or is_union(core):
        return _json_value
    return str


def _checked(cls: type[Options], name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, then the field's checks: argparse names the flag in the error
    (``argument --seed: must be at least 0, got -1``)."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError as e:
            if parse in (int, float):
                raise  # argparse's own "invalid int value: 'x'"
            raise argparse.ArgumentTypeError(str(e)) from None
        problem = None if value == "" else field_problem(cls, name, value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem.lstrip(" ."))
        return value

    convert.__name__ = getattr(parse, "__name__", "value")  # argparse's "invalid int value: 'x'"
    return convert


def _cli_core(tp: Any) -> Any:
    """``X`` of ``X | None``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if is_union(tp) else [tp]
    return args[0] if len(args) == 1 else tp


def add_cli_options(parser: argparse.ArgumentParser | Any, cls: type[Options], *, title: str | None = None) -> None:
    """Adds one ``--flag`` per field of ``cls`` (help = the field's doc and default). An option
    not given is left out (``None`` in the namespace), so the field's default applies."""
    group = parser.add_argument_group(title or f"{cls.section.replace('_', ' ')} options")
    hints = field_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp = hints[f.name]
        doc = f.metadata["doc"]
        flag = _cli_flag(f.name)
        if tp is bool:
            if f.default is True:  # on by default: --no-NAME turns it off
                group.add_argument(
                    flag, action=argparse.BooleanOptionalAction, default=None, help=doc + " (default on)"
                )
            else:
                group.add_argument(flag, action="store_true", default=None, help=doc)
            continue
        literal = next(
            (a for a in ((tp,) if not is_union(tp) else typing.get_args(tp)) if typing.get_origin(a) is Literal), None
        )
        shown = "" if f.default is None else f" (default {shown_value(f.default)})"
        kwargs: dict[str, Any] = {"default": None, "help": doc + shown}
        if literal is not None:
            choices = list(typing.get_args(literal))
            renamed = RENAMED_VALUES.get(f.name, {})
            kwargs["choices"] = choices + sorted(renamed)  # former names still parse (with a warning)
            kwargs["metavar"] = "{" + ",".join(choices) + "}"
        else:
            kwargs["type"] = _checked(cls, f.name, f.metadata.get("parse") or _cli_parser(tp))
            plain = {int: "N", float: "X", str: "TEXT"}
            kwargs["metavar"] = f.metadata.get("cli") or plain.get(_cli_core(tp), f.name.upper())
        if f.default is not None and is_union(tp) and str in typing.get_args(tp):
            kwargs["help"] += "; '' for None"
        group.add_argument(flag, **kwargs)


def options_from_cli(cls: type[OptionsT], args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (those left out keep their defaults); for a
    ``str | None`` option an empty string means None."""
    hints = field_hints(cls)
    given: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if value == "" and is_union(hints[f.name]) and type(None) in typing.get_args(hints[f.name]):
            value = None
        given[f.name] = value
    return given
