"""Errors that reach the user as one line and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgekitError(Exception):
    """A problem with the user's input or environment: shown as one line, exit code 2, no traceback."""

    exit_code = 2


class SettingsError(EdgekitError):
    """A stage, recipe or target setting is invalid."""


class InputError(EdgekitError):
    """A model, weights, data or artifact file is missing, corrupt or of the wrong shape."""


class VerificationError(EdgekitError):
    """An exported artifact disagrees with its reference beyond tolerance."""


class RuntimeUnavailable(EdgekitError):
    """A runtime or tool needed for a step is not installed."""


def unknown(kind: str, name: str, choices: Iterable[str], hint: str = "") -> EdgekitError:
    """Builds the one-line error for an unknown name, naming the closest matches.

    Args:
        kind: what was looked up ("target", "model", "stage").
        name: the name the user gave.
        choices: the names that exist.
        hint: a last sentence saying what to do.
    """
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if not close:
        lowered = name.lower()
        close = [c for c in choices if lowered in c.lower() or c.lower() in lowered][:3]
    msg = f"unknown {kind} '{name}'"
    if close:
        msg += f"; closest: {', '.join(close)}"
    if hint:
        msg += f". {hint}"
    return EdgekitError(msg)


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, at most `limit` characters (its class name when the message is
    empty): what a one-line error quotes from a library that raised."""
    text = str(e).strip().splitlines()
    return text[0][:limit] if text else type(e).__name__
