"""Typed errors that carry what a user needs to fix the problem.

Every error Ratchet raises on purpose derives from ``RatchetError``; the CLI prints
its message and exits non-zero without a traceback. Anything else is a bug.
"""

from __future__ import annotations


class RatchetError(Exception):
    """Base class for errors a user can act on."""

    exit_code = 1


class ConfigError(RatchetError):
    """The configuration is invalid: unknown key, wrong type, missing path."""

    exit_code = 2


class DataError(RatchetError):
    """The input data cannot be read (missing file, malformed CSV, bad encoding)."""

    exit_code = 3


class DataValidationError(DataError):
    """The data was read but failed the Great Expectations suite.

    Attributes:
        failures: one dict per failed expectation (name, column, observed value, examples).
    """

    def __init__(self, message: str, failures: list[dict] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class TrainingError(RatchetError):
    """Training could not start or could not finish (bad hyper-parameters, NaN loss)."""

    exit_code = 4


class RegistryError(RatchetError):
    """The MLflow model registry is not in the state an operation needs."""

    exit_code = 5


class AliasChanged(RegistryError):
    """An alias moved between a decision and the move it led to (another writer acted);
    nothing was moved, and the decision has to be made again."""


class GateRejected(RatchetError):
    """A manual promotion was refused by the promotion gate."""

    exit_code = 6


class ServingError(RatchetError):
    """A Bento could not be built or served."""

    exit_code = 7


class ParityError(ServingError):
    """An exported runtime does not score the test split like the evaluated torch model."""


class VersioningError(RatchetError):
    """A DVC or git operation failed (no repository, remote unreachable, missing outputs)."""

    exit_code = 8
