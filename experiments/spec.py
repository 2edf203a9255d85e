"""``NAME:field=value,...`` specs of the synthetic data sources (``--data recall:length=2048``)."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["parse_spec"]


def parse_spec(cls: type[T], name: str, spec: str, *, floats: tuple[str, ...] = ()) -> T:
    """``cls`` (a dataclass) from ``"NAME"`` or ``"NAME:field=value,..."``; integer fields, except ``floats``.

    Raises:
        ValueError: an unknown field, or a value that is not a number.
    """
    body = spec.removeprefix(name).removeprefix(":")
    values: dict[str, Any] = {}
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    for part in filter(None, body.split(",")):
        field, _, text = part.partition("=")
        field = field.strip().replace("-", "_")
        if field not in fields:
            raise ValueError(f"{name} spec {spec!r}: unknown key {field!r} (known: {', '.join(fields)})")
        try:
            values[field] = float(text) if field in floats else int(text)
        except ValueError:
            whole = "" if field in floats else f" (NAME=INTEGER for {field})"
            raise ValueError(f"{name} spec {spec!r}: {part!r} is not NAME=NUMBER{whole}") from None
    return cls(**values)
