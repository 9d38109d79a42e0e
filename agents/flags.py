"""The command line of the agent scripts, from their frozen dataclasses: one `--flag` per
field, with the field's help text and default (so the two never drift apart)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import MISSING, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


def flag(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field that `parse_flags` exposes as `--field-name` with this help text
    (extra keywords go to `add_argument`, e.g. `nargs`, `choices`, or `type` for a None
    default)."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


def parse_flags(
    cls: type[T], argv: Sequence[str] | None = None, description: str = "", prog: str | None = None
) -> T:
    """`cls` from the command line. Booleans get `--x/--no-x` (unless the field names its own
    action); tuples take several values; every other type is the default's."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in fields(cls):  # type: ignore[arg-type]
        if f.default is MISSING:
            raise TypeError(f"{cls.__name__}.{f.name} needs a default to be a flag")
        kwargs = dict(f.metadata)
        text = f"{kwargs.pop('help')} (default: {f.default!r})"
        if isinstance(f.default, bool):
            kwargs.setdefault("action", argparse.BooleanOptionalAction)
        elif isinstance(f.default, tuple):
            kwargs.setdefault("nargs", "+")
            kwargs.setdefault("type", type(f.default[0]) if f.default else str)
        elif f.default is not None:
            kwargs.setdefault("type", type(f.default))
        parser.add_argument("--" + f.name.replace("_", "-"), default=f.default, help=text, **kwargs)
    values = vars(parser.parse_args(argv))
    for f in fields(cls):  # type: ignore[arg-type]
        if isinstance(f.default, tuple):
            values[f.name] = tuple(values[f.name])
    return cls(**values)
