"""The generic validator: plain data (from ``yaml.safe_load``) mapped onto frozen dataclasses.

Every problem is one line naming the key path, the bad value and what is valid::

    params/tiny.yaml: train.optimizer.lr = -0.1 is out of range; valid: > 0

Each dataclass field may carry bounds through :func:`knob`; nested dataclasses, ``list[...]``,
``dict[str, ...]``, ``Optional[...]`` and ``Literal[...]`` are checked recursively. Numbers must be
finite (``.inf`` and ``.nan`` are refused wherever a number is expected).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Any, Literal, Mapping, TypeVar, Union

from kdlib.errors import KdlibError

T = TypeVar("T")

def knob(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    doc: str = "",
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with optional numeric bounds, checked by :func:`from_dict`."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _bounds_text(meta: Mapping[str, Any]) -> str:
    parts = []
    for key, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if meta.get(key) is not None:
            parts.append(f"{sym} {meta[key]}")
    return " and ".join(parts)


def _check_bounds(value: Any, meta: Mapping[str, Any], where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    ok = True
    if meta.get("ge") is not None and not value >= meta["ge"]:
        ok = False
    if meta.get("gt") is not None and not value > meta["gt"]:
        ok = False
    if meta.get("le") is not None and not value <= meta["le"]:
        ok = False
    if meta.get("lt") is not None and not value < meta["lt"]:
        ok = False
    if value != value:  # NaN
        ok = False
    if not ok:
        raise KdlibError(f"{where} = {value!r} is out of range; valid: {_bounds_text(meta)}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(inner)}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (converted where lossless)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise KdlibError(f"{where} = {value!r} is not valid; valid: {', '.join(map(repr, choices))}")
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, where)
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise KdlibError(f"{where} = {value!r} has the wrong type; valid: {_type_name(tp)}")
        return [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp) or (str, Any)
        if not isinstance(value, Mapping):
            raise KdlibError(f"{where} = {value!r} has the wrong type; valid: a mapping")
        return {
            _convert(k, key_tp, f"{where} key"): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise KdlibError(f"{where} = {value!r} has the wrong type; valid: true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise KdlibError(f"{where} = {value!r} has the wrong type; valid: an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise KdlibError(f"{where} = {value!r} has the wrong type; valid: a number")
        if not math.isfinite(value):
            raise KdlibError(f"{where} = {value!r} is not valid; valid: a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise KdlibError(f"{where} = {value!r} has the wrong type; valid: a string")
        return value
    raise TypeError(f"params: unsupported annotation {tp!r} at {where}")  # a bug in kdlib, not in input


def _convert_union(value: Any, tp: Any, where: str) -> Any:
    """The first member type of ``tp`` that accepts ``value`` (``None`` for ``Optional``)."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, where)
        except KdlibError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise KdlibError(f"{where} = {value!r} has the wrong type; valid: {_type_name(tp)}")


def from_dict(cls: type[T], data: Any, where: str = "params") -> T:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys, missing keys, wrong types and ranges."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise KdlibError(f"{where} = {data!r} has the wrong type; valid: a mapping ({cls.__name__})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        raise KdlibError(f"{_join(where, key)} is an unknown key; valid keys: {', '.join(sorted(fields))}")
    values = {}
    for name, f in fields.items():
        key_where = _join(where, name)
        if name in data:
            value = _convert(data[name], hints[name], key_where)
            _check_bounds(value, f.metadata, key_where)
            values[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise KdlibError(f"{key_where} is missing; it is required ({_type_name(hints[name])})")
    try:
        obj = cls(**values)
    except KdlibError as exc:
        raise KdlibError(_join(where, str(exc))) from None
    return obj


def _join(where: str, key: str) -> str:
    """``where`` + ``key``: ``file.yaml:`` + ``seed`` -> ``file.yaml: seed``; ``a`` + ``b`` -> ``a.b``."""
    if not where:
        return key
    if where.endswith(":"):
        return f"{where} {key}"
    if key.startswith("= "):
        return f"{where} {key}"
    return f"{where}.{key}"


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a params dataclass: what a manifest records."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get("internal")}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def replace_from_dict(base: T, overrides: Mapping[str, Any], where: str) -> T:
    """``base`` with the keys of ``overrides`` replaced, validated as :func:`from_dict` would."""
    merged = to_dict(base)
    if not isinstance(overrides, Mapping):
        raise KdlibError(f"{where} = {overrides!r} has the wrong type; valid: a mapping")
    fields = {f.name for f in dataclasses.fields(base)}
    for key in overrides:
        if key not in fields:
            raise KdlibError(f"{_join(where, key)} is an unknown key; valid keys: {', '.join(sorted(fields))}")
    merged.update(overrides)
    return from_dict(type(base), merged, where)


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def check_plain_name(value: Any, where: str) -> str:
    """``value`` if it is a plain name that is safe as one path component: letters, digits, ``_ - .``,
    1 to 64 characters, not ``.`` or ``..``; otherwise one line naming it."""
    ok = isinstance(value, str) and 0 < len(value) <= 64 and set(value) <= _NAME_CHARS and value not in (".", "..")
    if not ok:
        raise KdlibError(
            f"{where} = {value!r} is not a plain name; valid: 1-64 letters, digits, '_', '-' or '.', not '.' or '..'"
        )
    return value
