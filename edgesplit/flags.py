"""`serve edge` / `serve cloud` flags made from the settings' fields, so each setting is written once.

Every field of a settings object becomes a flag: `--field-name` (or the names its `json_schema_extra["flags"]`
gives), its description as the help, its type and choices from the annotation, booleans as `--x/--no-x`. Secrets
(`SecretStr`) get no flag: a flag would show them in the process list, so they come from the environment only.
A flag left out keeps its default of None and so leaves the environment or the setting's default in force.
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _flag_kwargs(name: str, info: FieldInfo) -> dict[str, Any]:
    kind = _without_none(info.annotation)
    kwargs: dict[str, Any] = {"dest": name, "default": None, "help": (info.description or "").replace("%", "%%")}
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif get_origin(kind) is Literal:
        kwargs["choices"] = list(get_args(kind))
    elif kind in (int, float, Path):
        kwargs["type"] = kind
    return kwargs


def flag_names(name: str, info: FieldInfo) -> list[str]:
    """The flags of one field: its own list, else `--field-name`."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    flags = extra.get("flags")
    return [str(f) for f in flags] if isinstance(flags, list) else [f"--{name.replace('_', '-')}"]


def add_settings_flags(parser: argparse.ArgumentParser, settings: type[BaseSettings]) -> None:
    """One flag per non-secret field of `settings`."""
    for name, info in settings.model_fields.items():
        if _without_none(info.annotation) is SecretStr:
            continue
        parser.add_argument(*flag_names(name, info), **_flag_kwargs(name, info))


def settings_from_args(settings: type[S], args: argparse.Namespace) -> S:
    """The settings with only the flags the user gave: the rest come from the environment or the defaults."""
    given = {n: getattr(args, n) for n in settings.model_fields if getattr(args, n, None) is not None}
    return settings(**given)
