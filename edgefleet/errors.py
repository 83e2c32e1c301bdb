"""The one error type of edgefleet.

Every failure a person can act on is an `EdgefleetError`: a one-line cause, a fix, and an
exit code that is distinct per kind of failure so scripts can branch on it. The CLI prints
`error: <cause>` and `fix: <fix>` and exits with the code; no traceback.
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """A failure with a cause and a fix. Subclasses pick the exit code."""

    exit_code = 1

    def __init__(self, cause: str, fix: str = "") -> None:
        super().__init__(cause)
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        return self.cause if not self.fix else f"{self.cause} (fix: {self.fix})"


class UsageError(EdgefleetError):
    exit_code = 2


class UnsupportedOperatorsError(EdgefleetError):
    exit_code = 10


class CorruptModelError(EdgefleetError):
    exit_code = 11


class DynamicShapeError(EdgefleetError):
    exit_code = 12


class UnknownTargetError(EdgefleetError):
    exit_code = 13


class MissingToolError(EdgefleetError):
    exit_code = 14


class UnsafeArchiveError(EdgefleetError):
    exit_code = 15


class SigningKeyError(EdgefleetError):
    exit_code = 16


class NumericsMismatchError(EdgefleetError):
    exit_code = 17


class PackageIntegrityError(EdgefleetError):
    """Unsigned, tampered, untrusted or malformed model package."""

    exit_code = 18


class TargetNotRunnableError(EdgefleetError):
    exit_code = 19


class ModelSourceError(EdgefleetError):
    """The model could not be fetched or found (missing file, S3 error, empty archive)."""

    exit_code = 20


class BadInputError(EdgefleetError):
    """Malformed data handed to a running component (image, payload, config)."""

    exit_code = 21


class BuildError(EdgefleetError):
    """TVM failed to build or export for a reason that is not one of the above."""

    exit_code = 22


class ServiceError(EdgefleetError):
    """A service edgefleet talks to (broker, fleet API, database) failed or refused."""

    exit_code = 23


class TrainingJobError(EdgefleetError):
    """A training job (models/, SageMaker script mode run locally) failed or was refused."""

    exit_code = 50


# Fleet service (40-43): the REST API maps these onto 404, 409, 403 and 409.
class NotFoundError(EdgefleetError):
    exit_code = 40


class ConflictError(EdgefleetError):
    """The request clashes with what exists (duplicate version, used token)."""

    exit_code = 41


class PermissionDeniedError(EdgefleetError):
    """Missing, unknown or under-scoped API token."""

    exit_code = 42


class InvalidTransitionError(EdgefleetError):
    """A state machine was asked for a transition its table does not have."""

    exit_code = 43
