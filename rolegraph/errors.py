"""The one error type users see: a one-line message naming what is wrong and how to fix it."""

from __future__ import annotations


class RolegraphError(Exception):
    """A user-facing error. The CLI prints `error: <message> (fix: <hint>)` and exits 2, never a traceback."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.hint})" if self.hint else self.message


class ConfigError(RolegraphError):
    """A config file, role override or graph spec is invalid."""


class ModelNotFoundError(RolegraphError):
    """A model name or directory does not exist, or an endpoint does not serve it."""


class EndpointError(RolegraphError):
    """An endpoint is down, did not start, or answered with an error."""


class SandboxError(RolegraphError):
    """The sandbox itself could not run (not the program inside it)."""


class ParseError(RolegraphError):
    """Model output could not be parsed into a role's typed fields."""


class TrainingError(RolegraphError):
    """A trainer cannot run on the data or settings it was given."""
