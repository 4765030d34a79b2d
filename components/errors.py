"""Typed errors that carry what a user needs to fix the problem.

Every error Ratchet raises on purpose derives from ``RatchetError``; the CLI prints
its message and exits non-zero without a traceback. Anything else is a bug.
"""

from __future__ import annotations


class RatchetError(Exception):
    """Base class for errors a user can act on.

    A subclass states the CLI's exit code for it in its header, ``class
    ConfigError(RatchetError, exit_code=2)``; without one it inherits its parent's.
    """

    exit_code = 1

    def __init_subclass__(cls, exit_code: int | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code


class ConfigError(RatchetError, exit_code=2):
    """The configuration is invalid: unknown key, wrong type, missing path."""


class DataError(RatchetError, exit_code=3):
    """The input data cannot be read (missing file, malformed CSV, bad encoding)."""


class DataValidationError(DataError):
    """The data was read but failed the Great Expectations suite.

    Attributes:
        failures: one dict per failed expectation (name, column, observed value, examples).
    """

    def __init__(self, message: str, failures: list[dict] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class TrainingError(RatchetError, exit_code=4):
    """Training could not start or could not finish (bad hyper-parameters, NaN loss)."""


class RegistryError(RatchetError, exit_code=5):
    """The MLflow model registry is not in the state an operation needs."""


class AliasChanged(RegistryError):
    """An alias moved between a decision and the move it led to (another writer acted);
    nothing was moved, and the decision has to be made again."""


class GateRejected(RatchetError, exit_code=6):
    """A manual promotion was refused by the promotion gate."""


class ServingError(RatchetError, exit_code=7):
    """A Bento could not be built or served."""


class ParityError(ServingError):
    """An exported runtime does not score the test split like the evaluated torch model."""


class VersioningError(RatchetError, exit_code=8):
    """A DVC or git operation failed (no repository, remote unreachable, missing outputs)."""
