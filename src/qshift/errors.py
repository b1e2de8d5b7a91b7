"""Exceptions with messages that name the bad file, key or value and the valid choices."""

from __future__ import annotations

from typing import Iterable


class QShiftError(Exception):
    """Base class for user-facing errors: the stage CLIs print them without a traceback."""


class ConfigError(QShiftError):
    """A bad value in params.yaml or on the command line."""


class InputError(QShiftError):
    """A missing or malformed input file."""


class UnknownNameError(ConfigError, KeyError):
    """An unknown registry name (method, corruption, model ...)."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid choices: {', '.join(self.valid) or '(none)'}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]
