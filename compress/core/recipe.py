"""Typed recipes: TOML files read into frozen dataclasses with eager validation.

Unknown keys and wrong types are reported with the file and the dotted field name; the dataclasses'
own ``__post_init__`` checks report bad values.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from compress.core.errors import InputError
from compress.core.files import read_regular

T = TypeVar("T")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # TOML's integer range, which tomllib does not enforce
EXACT_FLOAT_INT = 2**53  # integers a float holds exactly: ``steps = 1e4`` is an integer, ``1e300`` is not
SHOWN_CHARS = 80  # a value is shown in an error up to this many characters
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few hundred bytes of settings


def shown(value: Any) -> str:
    """``repr(value)`` for an error line: cut to :data:`SHOWN_CHARS`, on one line."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS - 15]}... ({len(text)} chars)"


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a table, got {shown(value)}")
        return from_mapping(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0] if errors else f"{where}: invalid value {shown(value)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {shown(value)}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise InputError(f"{where}: integer {shown(value)} is outside TOML's 64-bit range")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: expected a number, got {shown(value)}")
        if not math.isfinite(value):
            raise InputError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int and isinstance(value, float) and not isinstance(value, bool):
        if not (math.isfinite(value) and value.is_integer() and abs(value) <= EXACT_FLOAT_INT):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp in (int, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise InputError(f"{where}: expected {tp.__name__}, got {shown(value)}")
    if typing.get_origin(tp) is typing.Literal and value not in typing.get_args(tp):
        raise InputError(f"{where}: expected one of {list(typing.get_args(tp))}, got {shown(value)}")
    return value


def from_mapping(cls: type[T], mapping: dict[str, Any], where: str = "recipe") -> T:
    """Build dataclass ``cls`` from a mapping, validating names, types and values.

    ``where`` names the mapping in errors (``""``: the top level of a file, named by the caller); a
    nested table's fields are named ``where.table.field``.
    """
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = {f.name for f in fields}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise InputError(f"{_at(where)}unknown field(s) {unknown}; allowed: {sorted(names)}")
    missing = [f.name for f in fields if f.name not in mapping and f.init
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"{_at(where)}missing field(s) {missing}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in mapping.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"{_at(where)}{exc}") from exc


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _read_text(path: Path) -> str:
    """The recipe's text (a UTF-8 BOM accepted): a regular file of at most :data:`MAX_RECIPE_BYTES`, so
    ``/dev/zero`` or a FIFO is refused instead of read without end."""
    raw = read_regular(path, MAX_RECIPE_BYTES, "recipe")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: cannot read the recipe ({exc})") from exc


def load_recipe(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Read a TOML recipe into ``cls``; ``overrides`` replace top-level keys (e.g. from the CLI)."""
    path = Path(path)
    text = _read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from exc
    except RecursionError:
        raise InputError(f"{path}: not a usable recipe (tables or arrays nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer literal past Python's int-conversion limit (4300 digits)
        raise InputError(f"{path}: not a usable recipe: {str(exc).splitlines()[0][:SHOWN_CHARS]}") from None
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return from_mapping(cls, data, where="")
    except InputError as exc:  # the file first, then the field: "error: <file>: train.lr: ..."
        raise InputError(f"{path}: {exc}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """Recipe to a plain dict (round-trips through :func:`from_mapping`)."""
    return dataclasses.asdict(obj)


def with_seed(recipe: T, seed: int) -> T:
    """``recipe`` with every ``seed`` field of it and of its nested config dataclasses set to ``seed``
    (patch sampling, training, calibration patches): one number to rerun a recipe under another draw."""
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(recipe):  # type: ignore[arg-type]
        value = getattr(recipe, field.name)
        if field.name == "seed":
            changes["seed"] = seed
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[field.name] = with_seed(value, seed)
    return dataclasses.replace(recipe, **changes)  # type: ignore[type-var]
