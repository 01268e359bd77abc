"""One typed loader for config dataclasses read from TOML (or JSON).

The dataclasses stay the public types and keep their range checks in ``__post_init__``; this
module only turns a nested dict into them, checked against their field annotations, and says
exactly where a value is wrong::

    market.toml: [market.world] drift_period: expected an integer, got "five" (str)

What a file may hold follows from the annotations: ``int`` (not bool, not float), ``float``
(ints accepted, must be finite), ``str``, ``bool``, ``Literal[...]``, ``X | None`` (None only
from JSON: TOML has no null), ``tuple[X, ...]`` / ``tuple[X, Y]`` /
``list[X]`` (arrays), nested dataclasses (tables) and *named tables*: a field typed
``tuple[tuple[str, D], ...]`` with ``D`` a dataclass is written as a table of tables keyed by
name, whose names must be those of the field's default and whose entries are merged over the
default entry of the same name (so a partial entry changes only the keys it gives). Unknown
keys and names are refused with the valid ones. A field with ``metadata={"from_file": False}``
is set in code only. Field metadata ``{"names": "segment"}`` names what a named table is keyed by
in messages.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Cfg:
    ...     n: int = 1
    ...     rate: float = 0.5
    >>> config_from_dict(Cfg, {"n": 3, "rate": 1}, "cfg")
    Cfg(n=3, rate=1.0)
    >>> config_from_dict(Cfg, {"n": 2.5}, "cfg", source="x.toml")
    Traceback (most recent call last):
    ...
    copyloop.config.ConfigError: x.toml: [cfg] n: expected an integer, got 2.5 (float)
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import tomllib
import types
from collections.abc import Mapping
from dataclasses import MISSING, Field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names the file (when there is one), the table
    and the key. A ``ValueError``, so callers that catch bad input already catch it."""


def read_toml(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """The parsed TOML file at ``path``.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: it is not a readable file of valid UTF-8 TOML (the message has the line).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {p} does not exist")
    if not p.is_file():
        raise ConfigError(f"{what} {p} is not a file")
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a UTF-8 text file (byte {e.start}) — is it TOML?") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read: {e.strerror or e}") from None


def config_from_dict(
    cls: type[T], data: Any, where: str, *, source: str | None = None, base: T | None = None
) -> T:
    """Build the dataclass ``cls`` from a nested dict, checking every value's type.

    Args:
        cls: a dataclass whose fields have the annotations listed in the module docstring.
        data: the table (keys are field names; absent keys keep their defaults).
        where: the dotted table name used in messages (``"market.world"``).
        source: the file the table came from, named first in messages.
        base: an instance whose values stand in for absent keys (instead of the defaults).

    Raises:
        ConfigError: a wrong type, an unknown key or name, a missing required key, or a value
            refused by ``cls.__post_init__``.
    """
    at = f"{source}: " if source else ""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{at}[{where}] must be a table, got {_show(data)}")
    all_fields = fields(cast(Any, cls))
    loadable = {f.name: f for f in all_fields if f.metadata.get("from_file", True)}
    unknown = sorted(set(data) - set(loadable))
    if unknown:
        code_only = [k for k in unknown if k in {f.name for f in all_fields}]
        hint = f" ({', '.join(code_only)}: set in code, not from a file)" if code_only else ""
        raise ConfigError(
            f"{at}unknown key(s) {unknown} in [{where}]{hint}{_did_you_mean(unknown, loadable)}; "
            f"valid keys: {', '.join(loadable)}"
        )
    hints = get_type_hints(cls)
    kwargs = {k: _value(hints[k], v, where, k, at, source, loadable[k]) for k, v in data.items()}
    if base is None:
        missing = [
            f.name
            for f in all_fields
            if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise ConfigError(f"{at}[{where}] missing key(s) {missing}")
    try:
        return replace(base, **kwargs) if base is not None else cls(**kwargs)  # type: ignore[type-var]
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{at}[{where}] {e}") from None


def config_to_dict(obj: Any) -> dict[str, Any]:
    """The dict :func:`config_from_dict` reads back to an equal ``obj``: nested tables, named
    tables as tables, tuples as lists, None values and code-only fields left out."""
    hints = get_type_hints(type(obj))
    out: dict[str, Any] = {}
    for f in fields(obj):
        if not f.metadata.get("from_file", True):
            continue
        v = _plain(hints[f.name], getattr(obj, f.name))
        if v is not None:
            out[f.name] = v
    return out


# ---- internals ---------------------------------------------------------------------------------
def _named_table(tp: Any) -> type | None:
    """``D`` when ``tp`` is ``tuple[tuple[str, D], ...]`` with ``D`` a dataclass, else None."""
    args = get_args(tp)
    if get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis:
        pair = get_args(args[0])
        is_pair = get_origin(args[0]) is tuple and len(pair) == 2 and pair[0] is str
        if is_pair and isinstance(pair[1], type) and is_dataclass(pair[1]):
            return pair[1]
    return None


def _plain(tp: Any, v: Any) -> Any:
    if v is None:
        return None
    if is_dataclass(v) and not isinstance(v, type):
        return config_to_dict(v)
    entry = _named_table(tp)
    if entry is not None:
        return {name: config_to_dict(x) for name, x in v}
    if isinstance(v, (tuple, list)):
        args = [a for a in get_args(tp) if a is not Ellipsis] or [Any]
        return [_plain(args[min(i, len(args) - 1)], x) for i, x in enumerate(v)]
    return v


class _Mismatch(Exception):
    """A value that does not fit an annotation; ``expected`` says what would."""

    def __init__(self, expected: str, fix: str = "") -> None:
        self.expected, self.fix = expected, fix


def _value(
    tp: Any, v: Any, where: str, key: str, at: str, source: str | None, f: Field[Any]
) -> Any:
    """The field value for ``v`` (a key of table ``where``), or a ConfigError."""
    entry = _named_table(tp)
    if entry is not None and isinstance(v, Mapping):
        return _named_entries(entry, v, f"{where}.{key}", at, source, f)
    try:
        return _convert(tp, v, f"{where}.{key}", source)
    except _Mismatch as m:
        fix = f" — {m.fix}" if m.fix else ""
        raise ConfigError(
            f"{at}[{where}] {key}: expected {m.expected}, got {_show(v)}{fix}"
        ) from None


def _named_entries(
    entry: type, v: Mapping[str, Any], where: str, at: str, source: str | None, f: Field[Any]
) -> tuple[tuple[str, Any], ...]:
    if f.default is not MISSING:
        default = dict(f.default)
    else:
        default = dict(f.default_factory()) if f.default_factory is not MISSING else {}
    noun = f.metadata.get("names", "name")
    unknown = sorted(set(v) - set(default))
    if unknown:
        raise ConfigError(
            f"{at}unknown {noun}(s) {unknown} in [{where}]{_did_you_mean(unknown, default)}; "
            f"valid {noun}s: {', '.join(default)}"
        )
    merged = dict(default)
    for name, table in v.items():
        merged[name] = config_from_dict(
            entry, table, f"{where}.{name}", source=source, base=default[name]
        )
    return tuple(merged.items())


def _convert(tp: Any, v: Any, where: str, source: str | None) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return v
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if v is None and len(options) < len(args):
            return None
        misses = []
        for a in options:
            try:
                return _convert(a, v, where, source)
            except _Mismatch as m:
                misses.append(m)
        if len(misses) == 1:
            raise misses[0]
        raise _Mismatch(" or ".join(_expected(a) for a in options))
    if origin is Literal:
        if v in args and type(v) in {type(a) for a in args}:
            return v
        raise _Mismatch("one of " + ", ".join(_show_value(a) for a in args))
    if tp is bool:
        if isinstance(v, bool):
            return v
        raise _Mismatch(_expected(tp))
    if tp is int:
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, float) and v.is_integer() and math.isfinite(v):
            raise _Mismatch("an integer", f"write {int(v)}, without the decimal point")
        raise _Mismatch(_expected(tp))
    if tp is float:
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            if not math.isfinite(v):
                raise _Mismatch("a finite number")
            return float(v)
        raise _Mismatch(_expected(tp))
    if tp is str:
        if isinstance(v, str):
            return v
        raise _Mismatch(_expected(tp))
    if isinstance(tp, type) and is_dataclass(tp):
        if not isinstance(v, Mapping):
            raise _Mismatch(_expected(tp))
        return config_from_dict(tp, v, where, source=source)
    if origin in (tuple, list):
        if not isinstance(v, (list, tuple)):
            raise _Mismatch(_expected(tp))
        if origin is tuple and args and args[-1] is not Ellipsis and len(v) != len(args):
            raise _Mismatch(_expected(tp))
        items = [args[0] if args and args[-1] is Ellipsis else a for a in args] or [Any]
        out = []
        for i, x in enumerate(v):
            try:
                out.append(_convert(items[min(i, len(items) - 1)], x, where, source))
            except _Mismatch as m:
                raise _Mismatch(f"{_expected(tp)} (item {i}: {m.expected})", m.fix) from None
        return tuple(out) if origin is tuple else out
    raise TypeError(f"config_from_dict cannot read a field annotated {tp!r} ([{where}])")


def _expected(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if (isinstance(tp, type) and is_dataclass(tp)) or _named_table(tp) is not None:
        return "a table"
    if origin in (tuple, list):
        if (args and args[-1] is Ellipsis) or origin is list:
            inner = _expected(args[0]) if args else "values"
            return f"an array (each {inner})"
        return f"an array of {len(args)} ({', '.join(_expected(a) for a in args)})"
    if origin in (Union, types.UnionType):
        return " or ".join(_expected(a) for a in args if a is not type(None))
    return repr(tp)


def _show_value(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, str) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _show(v: Any) -> str:
    if isinstance(v, Mapping):
        return "a table"
    kind = "array" if isinstance(v, (list, tuple)) else type(v).__name__
    return f"{_show_value(v)} ({kind})"


def _did_you_mean(unknown: list[str], valid: Mapping[str, Any]) -> str:
    guesses = {u: difflib.get_close_matches(u, list(valid), n=2, cutoff=0.6) for u in unknown}
    said = [f"{u!r} -> {' or '.join(map(repr, g))}" for u, g in guesses.items() if g]
    if not said:
        return ""
    if len(unknown) == 1:
        return f" (did you mean {' or '.join(map(repr, guesses[unknown[0]]))}?)"
    return f" (did you mean {'; '.join(said)}?)"
