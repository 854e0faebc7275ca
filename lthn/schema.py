"""A small typed-schema engine: dataclasses whose fields carry a doc line and a check.

One declaration per setting drives parsing, `lthnctl config check` and the commented
sample config (`lthn.config_sample`). Errors name the file, the key path and the reason;
an unknown key is an error with a "did you mean"; a present but wrong value is never
replaced by a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

Check = Callable[[Any], str | None]


class ConfigError(Exception):
    """A user mistake in a config file: printed as one line, exit code 2."""

    def __init__(self, source: str, path: str, reason: str) -> None:
        self.source = source
        self.path = path
        self.reason = reason
        where = f"{source}: {path}: " if path else f"{source}: "
        super().__init__(where + reason)


def setting(default: Any = dataclasses.MISSING, doc: str = "", check: Check | None = None,
            example: Any = None) -> Any:
    """Declare a config field with its one-line doc and an optional value check."""
    meta = {"doc": doc, "check": check, "example": example}
    if isinstance(default, list | dict):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(describe(a) for a in typing.get_args(hint))
    if origin is list:
        return "a list"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            Decimal: "a decimal number"}.get(hint, str(hint))


class Parser:
    """Turns plain YAML data into the schema's dataclasses, or raises ConfigError."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, reason: str) -> typing.NoReturn:
        raise ConfigError(self.source, path, reason)

    def parse(self, cls: type, data: Any, path: str = "") -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(path, f"must be a mapping (got {describe(data)})")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key in data:
            if not isinstance(key, str) or key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                self.fail(_join(path, str(key)), f"unknown key{hint}")
        values = {}
        for name, field in fields.items():
            sub = _join(path, name)
            if name in data:
                values[name] = self.value(hints[name], data[name], sub)
                check = field.metadata.get("check")
                problem = check(values[name]) if check and values[name] is not None else None
                if problem:
                    self.fail(sub, f"{problem} (got {describe(data[name])})")
            elif (field.default is dataclasses.MISSING
                  and field.default_factory is dataclasses.MISSING):
                self.fail(sub, "missing value: " + (field.metadata.get("doc") or "required"))
        return cls(**values)

    def value(self, hint: Any, raw: Any, path: str) -> Any:
        origin = typing.get_origin(hint)
        if origin in (types.UnionType, typing.Union):
            args = typing.get_args(hint)
            if raw is None and type(None) in args:
                return None
            last: ConfigError | None = None
            for arg in args:
                if arg is type(None):
                    continue
                try:
                    return self.value(arg, raw, path)
                except ConfigError as exc:
                    last = exc
            if len([a for a in args if a is not type(None)]) == 1 and last:
                raise last
            self.fail(path, f"must be {_type_name(hint)} (got {describe(raw)})")
        if origin is Literal:
            if raw not in typing.get_args(hint):
                self.fail(path, f"must be {_type_name(hint)} (got {describe(raw)})")
            return raw
        if origin is list:
            if not isinstance(raw, list):
                self.fail(path, f"must be a list (got {describe(raw)})")
            (item,) = typing.get_args(hint)
            return [self.value(item, v, f"{path}[{i}]") for i, v in enumerate(raw)]
        if dataclasses.is_dataclass(hint):
            return self.parse(hint, raw, path)
        if hint is bool:
            if not isinstance(raw, bool):
                self.fail(path, f"must be true or false (got {describe(raw)})")
            return raw
        if hint is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                self.fail(path, f"must be an integer (got {describe(raw)})")
            return raw
        if hint is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                self.fail(path, f"must be a number (got {describe(raw)})")
            return float(raw)
        if hint is Decimal:
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                self.fail(path, f"must be a decimal number (got {describe(raw)})")
            try:
                # str() first: 0.1 written in YAML means exactly one tenth, not a binary float
                number = Decimal(str(raw))
            except InvalidOperation:
                self.fail(path, f"must be a decimal number (got {describe(raw)})")
            if not number.is_finite():
                self.fail(path, f"must be a finite number (got {describe(raw)})")
            return number
        if hint is str:
            if not isinstance(raw, str):
                self.fail(path, f"must be a string (got {describe(raw)})")
            return raw
        raise TypeError(f"schema type {hint!r} not supported")  # a bug in the schema itself


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def walk(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, Any, dataclasses.Field]]:
    """Yield (key path, type hint, field) for every setting, depth first (for docs)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        path = _join(prefix, field.name)
        hint = hints[field.name]
        yield path, hint, field
        if dataclasses.is_dataclass(hint):
            yield from walk(hint, path)
        elif typing.get_origin(hint) is list:
            (item,) = typing.get_args(hint)
            if dataclasses.is_dataclass(item):
                yield from walk(item, path + "[]")


def type_name(hint: Any) -> str:
    return _type_name(hint)
