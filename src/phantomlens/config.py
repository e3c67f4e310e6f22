"""Dataclass configs: help text, validation in one place, a JSON round-trip, and CLI flags.

``option(default, help, check=..., choices=...)`` declares a field once; ``JsonConfig`` validates
every field against its annotation, its choices and its check in ``__post_init__`` (so a config
that exists is a valid one), and ``group(Cls, help)`` composes one config inside another
(``RunConfig.stop`` is a ``StopRule``) instead of copying its fields. ``add_arguments`` turns a
config class into argparse flags (``lora_r`` → ``--lora-r``; a group's fields become flags of
their own names) and ``from_namespace`` reads them back, so library arguments and CLI flags
cannot drift apart. Nothing heavy is imported here: ``phantomlens --help`` builds on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from phantomlens.errors import PhantomLensError


@dataclass(frozen=True)
class Check:
    """A named predicate on a field's value: ``ok(value)`` and the words for an error message."""

    ok: Callable[[Any], bool]
    description: str


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


POSITIVE = Check(lambda v: _finite(v) and v > 0, "a positive finite number")
NON_NEGATIVE = Check(lambda v: _finite(v) and v >= 0, "a finite number ≥ 0")
FINITE = Check(_finite, "a finite number")
UNIT_INTERVAL = Check(lambda v: _finite(v) and 0 < v <= 1, "a number in (0, 1]")
FRACTION = Check(lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)")
OPEN_FRACTION = Check(lambda v: _finite(v) and 0 < v < 1, "a number in (0, 1)")


def at_least(minimum: int) -> Check:
    return Check(lambda v: v >= minimum, f"at least {minimum}")


def at_most(maximum: int) -> Check:
    return Check(lambda v: v <= maximum, f"at most {maximum:,}")


def both(*checks: Check) -> Check:
    return Check(lambda v: all(c.ok(v) for c in checks), " and ".join(c.description for c in checks))


def option(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    check: Check | None = None,
    flag: str | None = None,
):
    """A dataclass field carrying its CLI help, allowed values, validity check and flag name."""
    metadata = {"help": help, "choices": choices, "check": check, "flag": flag}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def group(cls: type, help: str):
    """A nested config (composition): its fields keep their own names as CLI flags."""
    return dataclasses.field(default_factory=cls, metadata={"help": help, "group": cls})


def _base_type(annotation: Any) -> tuple[type, bool, bool]:
    """(scalar type, is_list, optional) behind an annotation like ``float | None``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = type(None) in typing.get_args(annotation)
    if isinstance(annotation, types.UnionType | typing._UnionGenericAlias) and args:  # type: ignore[attr-defined]
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True, optional
    return annotation, False, optional


def _coerce(name: str, value: Any, scalar: type) -> Any:
    """``value`` as ``scalar`` where that loses nothing (an int for a float field), else an error."""
    if scalar is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if scalar in (int, float, str, bool) and (
        not isinstance(value, scalar) or (scalar is not bool and isinstance(value, bool))
    ):
        raise PhantomLensError(f"{name} must be {_type_words(scalar)}, got {value!r}")
    return value


def _type_words(scalar: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[scalar]


class JsonConfig:
    """PEFT-style config mixin: validation in ``__post_init__``, ``to_dict``/``from_dict``/JSON."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if "group" in f.metadata:
                if isinstance(value, dict):
                    setattr(self, f.name, f.metadata["group"].from_dict(value))
                elif not isinstance(value, f.metadata["group"]):
                    raise PhantomLensError(f"{f.name} must be a {f.metadata['group'].__name__}")
                continue
            setattr(self, f.name, self._checked(f, value, hints[f.name]))
        self.validate()

    def _checked(self, f: dataclasses.Field, value: Any, annotation: Any) -> Any:
        scalar, is_list, optional = _base_type(annotation)
        if value is None:
            if optional:
                return None
            raise PhantomLensError(f"{f.name} must be given (it cannot be null)")
        if is_list:
            if not isinstance(value, list | tuple):
                raise PhantomLensError(f"{f.name} must be a list, got {value!r}")
            value = [_coerce(f.name, item, scalar) for item in value]
            items = value
        else:
            value = _coerce(f.name, value, scalar)
            items = [value]
        choices, check = f.metadata.get("choices"), f.metadata.get("check")
        for item in items:
            if choices and item not in choices:
                raise PhantomLensError(
                    f"{f.name} must be one of {', '.join(map(str, choices))}, got {item!r}"
                )
            if check is not None and not check.ok(item):
                raise PhantomLensError(f"{f.name} must be {check.description}, got {item!r}")
        return value

    def validate(self) -> None:
        """Checks that involve more than one field; single fields are checked by their ``option``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def field_names(cls) -> set[str]:
        """Every settable name, nested groups included (the names the CLI flags use)."""
        names = set()
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            names |= f.metadata["group"].field_names() if "group" in f.metadata else {f.name}
        return names

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a nested dict, or from a flat one (a group's fields at the top level, the
        layout of files written before groups existed)."""
        if not isinstance(data, dict):
            raise PhantomLensError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
        own: dict[str, Any] = {}
        groups = {f.name: f.metadata["group"] for f in dataclasses.fields(cls) if "group" in f.metadata}  # type: ignore[arg-type]
        nested: dict[str, dict] = {name: {} for name in groups}
        plain = {f.name for f in dataclasses.fields(cls)} - set(groups)  # type: ignore[arg-type]
        unknown = []
        for key, value in data.items():
            if key in plain:
                own[key] = value
            elif key in groups:
                if not isinstance(value, dict | groups[key]):
                    raise PhantomLensError(f"{cls.__name__}.{key} must be an object, got {value!r}")
                nested[key].update(value if isinstance(value, dict) else value.to_dict())
            elif owner := next((g for g, c in groups.items() if key in c.field_names()), None):
                nested[owner][key] = value
            else:
                unknown.append(key)
        if unknown:
            raise PhantomLensError(f"unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
        built = {name: groups[name].from_dict(values) for name, values in nested.items()}
        return cls(**own, **built)

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied; a group's fields may be named directly (``patience=5``)."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Self:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PhantomLensError(f"not valid JSON for a {cls.__name__} ({exc})") from None
        return cls.from_dict(data)


def add_arguments(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """One flag per field of ``cls`` (groups flattened), except the names in ``exclude``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or "help" not in f.metadata:
            continue
        if "group" in f.metadata:
            add_arguments(parser, f.metadata["group"], exclude)
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        scalar, is_list, _ = _base_type(hints[f.name])
        help_text = f.metadata["help"]
        if scalar is bool:
            shown = f" (default: {'on' if default else 'off'})"
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text + shown
            )
        else:
            shown = "" if default is None else f" (default: {default})"
            parser.add_argument(
                flag,
                dest=f.name,
                type=_number_parser(scalar),
                nargs="+" if is_list else None,
                choices=f.metadata.get("choices"),
                metavar=_metavar(f, scalar, is_list),
                help=help_text + shown,
            )
        parser.set_defaults(**{f.name: default})


def _metavar(f: dataclasses.Field, scalar: type, is_list: bool) -> str | None:
    if f.metadata.get("choices"):
        return "{" + ",".join(map(str, f.metadata["choices"])) + "}"
    return {int: "N", float: "X"}.get(scalar, "NAME" if is_list else None)


def _number_parser(scalar: type) -> Callable[[str], Any]:
    """argparse's ``type=``: ``int``/``float`` with a message that names the bad text."""
    if scalar not in (int, float):
        return scalar

    def parse(text: str) -> Any:
        try:
            return scalar(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_type_words(scalar)} is needed, not {text!r}") from None

    parse.__name__ = scalar.__name__
    return parse


def from_namespace(cls: type, namespace: argparse.Namespace, **overrides: Any):
    """The config ``cls`` from parsed flags (a group's flags go back into the group)."""
    names = cls.field_names()
    values = {k: v for k, v in vars(namespace).items() if k in names}
    values.update(overrides)
    return cls.from_dict(values)
