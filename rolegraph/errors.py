"""Typed failures inside, one-line errors outside.

Every error rolegraph raises is a `RolegraphError` with a message and a fix. Code branches on the class (or on
`kind`, a `FailureKind`), never on the text: the CLI prints `error: <message> (fix: <hint>)` and exits 2, and
the store records the `kind` of a failed step so exports and summaries can count failures by kind.

    RolegraphError
    ├── ConfigError               a config file, role override, option or graph spec is invalid
    ├── ModelNotFoundError        a model name or directory does not exist, or an endpoint does not serve it
    ├── EndpointError             an endpoint failed (the infrastructure, not the model)
    │   ├── EndpointDownError     unreachable, or 429/5xx after every retry
    │   ├── EndpointTimeoutError  no answer within the endpoint's timeout
    │   └── RequestRejectedError  the server answered 4xx: the request itself is wrong
    ├── SandboxError              the sandbox itself could not run (not the program inside it)
    ├── ProgramTimeoutError       the program inside the sandbox ran out of time (the program's fault)
    ├── ParseError                model output could not be parsed into a role's typed fields
    └── TrainingError             a trainer cannot run on the data or settings it was given
"""

from __future__ import annotations

from enum import StrEnum


class FailureKind(StrEnum):
    """What failed, as recorded on a step or an episode."""

    CONFIG = "config"
    UNKNOWN_MODEL = "unknown_model"
    ENDPOINT_DOWN = "endpoint_down"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    SANDBOX = "sandbox"
    PROGRAM_TIMEOUT = "program_timeout"
    PARSE = "parse"
    TRAINING = "training"
    OTHER = "other"

    @property
    def infrastructure(self) -> bool:
        """True when the failure is not the model's doing: its reward is None, never a 0 the model earned."""
        return self in _INFRASTRUCTURE


class RolegraphError(Exception):
    """A user-facing error. The CLI prints `error: <message> (fix: <hint>)` and exits 2, never a traceback."""

    kind: FailureKind = FailureKind.OTHER

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.hint})" if self.hint else self.message


class ConfigError(RolegraphError):
    """A config file, role override, option or graph spec is invalid."""

    kind = FailureKind.CONFIG


class ModelNotFoundError(RolegraphError):
    """A model name or directory does not exist, or an endpoint does not serve it."""

    kind = FailureKind.UNKNOWN_MODEL


class EndpointError(RolegraphError):
    """An endpoint is down, did not start, or answered with an error."""

    kind = FailureKind.ENDPOINT_DOWN


class EndpointDownError(EndpointError):
    """The endpoint is unreachable, or kept answering 429/5xx through every retry."""

    kind = FailureKind.ENDPOINT_DOWN


class EndpointTimeoutError(EndpointError):
    """The endpoint did not answer within its timeout."""

    kind = FailureKind.TIMEOUT


class RequestRejectedError(EndpointError):
    """The endpoint answered with a 4xx status: the request (not the server) is wrong."""

    kind = FailureKind.REJECTED


class SandboxError(RolegraphError):
    """The sandbox itself could not run (not the program inside it)."""

    kind = FailureKind.SANDBOX


class ProgramTimeoutError(RolegraphError):
    """The program inside the sandbox did not finish in time (the sandbox itself is fine)."""

    kind = FailureKind.PROGRAM_TIMEOUT


class VerifierTimeoutError(RolegraphError):
    """A verifier (math-verify) gave no verdict in time: the verifier's failure, not the model's."""

    kind = FailureKind.TIMEOUT


class ParseError(RolegraphError):
    """Model output could not be parsed into a role's typed fields."""

    kind = FailureKind.PARSE


class TrainingError(RolegraphError):
    """A trainer cannot run on the data or settings it was given."""

    kind = FailureKind.TRAINING


_INFRASTRUCTURE = frozenset(
    {FailureKind.ENDPOINT_DOWN, FailureKind.TIMEOUT, FailureKind.REJECTED, FailureKind.SANDBOX}
)


def failure_kind(exc: BaseException) -> FailureKind:
    """The kind of any exception: a RolegraphError's own, else OTHER."""
    return exc.kind if isinstance(exc, RolegraphError) else FailureKind.OTHER
