"""Errors fedsim reports to the user as one line (exit code 2), never as a traceback."""

from __future__ import annotations

from typing import Any


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none): what a one-line report quotes
    of a library's error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class FedsimError(Exception):
    """A problem with the user's input, reported as a single line before any training starts."""


class ConfigError(FedsimError):
    """A config value outside what is allowed; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class DataError(FedsimError):
    """A data set that cannot be loaded or partitioned as configured."""


class DeployError(FedsimError):
    """A deployment step failed (a process that did not start, a node the SuperLink refused, a missing tool); the
    message says which, what to do, and where the log is."""
