"""Dataclass configs with help text, a JSON round-trip, and CLI flags generated from the same fields.

``option(default, help, ...)`` declares a field once; ``add_arguments`` turns a config class into
argparse flags (``lora_r`` → ``--lora-r``) and ``from_namespace`` reads them back, so the library
arguments and the CLI flags can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, Self


def option(default: Any, help: str, *, choices: tuple | None = None, flag: str | None = None):
    """A dataclass field carrying its CLI help, allowed values and (optionally) its flag name."""
    metadata = {"help": help, "choices": choices, "flag": flag}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class JsonConfig:
    """PEFT-style config mixin: ``to_dict``/``from_dict``/``to_json``/``from_json``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            from phantomlens.errors import PhantomLensError

            raise PhantomLensError(f"unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(scalar type, is_list) behind an annotation like ``float | None`` or ``list[str] | None``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType | typing._UnionGenericAlias) and args:  # type: ignore[attr-defined]
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_arguments(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or "help" not in f.metadata:
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        scalar, is_list = _base_type(hints[f.name])
        help_text = f.metadata["help"]
        if scalar is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
            continue
        shown = "" if default is None else f" (default: {default})"
        parser.add_argument(
            flag,
            dest=f.name,
            type=scalar,
            nargs="+" if is_list else None,
            default=default,
            choices=f.metadata.get("choices"),
            help=help_text + shown,
        )


def from_namespace(cls: type, namespace: argparse.Namespace, **overrides: Any):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    values.update(overrides)
    return cls(**values)
