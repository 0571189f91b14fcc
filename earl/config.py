"""Typed recipes: YAML files load into dataclasses, and nothing else.

One source of truth per stage: each training entry point defines a dataclass (with a `help`
string in each field's metadata); `load_config` reads a YAML recipe into it. Unknown keys, wrong
types and missing required fields fail with a `ConfigError` that names the file, the dotted
field and the expected type. Command-line overrides use `key.sub=value` with YAML syntax for the
value (`train.lr=3e-4`, `data.splits=[simple,complex]`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from earl.errors import ConfigError

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from a YAML file (optional) plus `key=value` overrides."""
    raw: dict[str, Any] = {}
    where = "<overrides>"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of fields at the top level, got {type(raw).__name__}")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected the form key.sub=value")
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = _parse_override_value(value)
    return from_dict(cls, raw, where=where)


def _parse_override_value(value: str) -> Any:
    """A command-line value as YAML, except that only true/false are booleans.

    YAML 1.1 (PyYAML) reads no/yes/on/off as booleans, so `run.mixed_precision=no` would turn
    into False; on a command line those are meant as the words themselves.
    """
    parsed = yaml.safe_load(value)
    if isinstance(parsed, bool) and value.strip().lower() not in ("true", "false"):
        return value.strip()
    return parsed


def from_dict(cls: type[T], data: dict[str, Any], where: str = "<dict>", prefix: str = "") -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(fields), n=1)
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known fields: {', '.join(fields)}"
        raise ConfigError(f"{where}: unknown field '{prefix}{k}' for {cls.__name__}{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], where, f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required field '{prefix}{name}' ({_describe(hints[name])})")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ checks
        raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML/JSON-ready data (saved with every checkpoint)."""
    return dataclasses.asdict(obj)


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, field: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:  # an optional field: its own type's error names the sub-field that is wrong
            return _coerce(value, arms[0], where, field)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where, field)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: field {field!r}: expected {_describe(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: field {field!r}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, where, prefix=f"{field}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: field {field!r}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: field {field!r}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, where, f"{field}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        seq = [_coerce(v, inner, where, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: field {field!r}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where, field): _coerce(v, vt, where, f"{field}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads "1e-4" (no dot) as a string; accept numeric strings for floats.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: field {field!r}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: field {field!r}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: field {field!r}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: field {field!r}: expected a string, got {value!r}")
        return value
    return value
