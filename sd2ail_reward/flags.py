"""Command lines from frozen dataclasses (tyro): each field is a `--flag`, its docstring the
help and its default the default, so flags, help and defaults cannot drift apart. A flag
spelled other than its field is named on the field itself (`tyro.conf.arg(name=...)`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TypeVar

import tyro

T = TypeVar("T")

MARKERS = (tyro.conf.DisallowNone,)
"""`X | None` fields take an X, None being only the default (as argparse had it); this makes a
`bool | None` field a `--flag/--no-flag` pair."""


def parse(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
    default: T | None = None,
) -> T:
    """`cls` from `argv` (sys.argv[1:] if None), with `default`'s values as the defaults when
    given; --help and usage errors exit."""
    return _cli(
        cls, argv, prog=prog, description=description,
        default=tyro.MISSING_NONPROP if default is None else default,
    )  # fmt: skip


def parse_known(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
) -> tuple[T, list[str]]:
    """`parse`, but the words that are none of `cls`'s flags come back, in order, instead of
    failing: for a command that hands them on to another."""
    return _cli(cls, argv, prog=prog, description=description, return_unknown_args=True)


def _cli(cls: type[Any], argv: Sequence[str] | None, **tyro_kwargs: Any) -> Any:
    args = attached_values(sys.argv[1:] if argv is None else argv)
    return tyro.cli(cls, args=args, config=MARKERS, **tyro_kwargs)


def attached_values(argv: Sequence[str]) -> list[str]:
    """`--flag '-x y'` as `--flag=-x y`. argparse took a dash-led word holding a space for a
    value (`--serve-args '--hidden-dim 32'`); tyro takes any dash-led word after a flag for a
    mistyped flag unless the value is attached with `=`."""
    out: list[str] = []
    for token in argv:
        flag = out[-1] if out else ""
        if (
            token.startswith("-")
            and " " in token
            and flag.startswith("--")
            and len(flag) > 2
            and "=" not in flag
            and " " not in flag
        ):
            out[-1] = f"{flag}={token}"
        else:
            out.append(token)
    return out
