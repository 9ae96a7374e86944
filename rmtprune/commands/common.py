"""What every command shares: the one-line error, argparse that reports mistakes as one line, and the
message for an error nobody planned for."""

from __future__ import annotations

import argparse
import os
import sys

from rmtprune.errors import UserError

DEBUG_ENV = "RMTPRUNE_DEBUG"  # set to 1: unexpected errors show their traceback


def err(msg: str) -> None:
    """Print ``rmtprune: error: msg`` on stderr."""
    print(f"rmtprune: error: {msg}", file=sys.stderr, flush=True)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def debugging() -> bool:
    """Whether unexpected errors should show their traceback (``RMTPRUNE_DEBUG=1``)."""
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false", "no")


def unexpected(exc: BaseException, what: str) -> str:
    """One line for an exception no check foresaw: what failed, the exception, how to see more."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{what}: {exc.strerror}{where}"
    return f"{what}: {type(exc).__name__}: {first_line(exc)[:300]} ({DEBUG_ENV}=1 shows the traceback)"


class Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as one ``rmtprune: error:`` line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        err(f"{self.prog.replace('rmtprune ', '')}: {message} (see {self.prog} --help)")
        raise SystemExit(2)


def formats(text: str, allowed: tuple[str, ...]) -> list[str]:
    """``--format csv,md`` -> ``["csv", "md"]``; anything outside ``allowed`` is a UserError."""
    items = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in items if f not in allowed]
    if bad or not items:
        raise UserError(f"--format {text!r}: accepted values are {', '.join(allowed)} (comma-separated)")
    return items
