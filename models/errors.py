"""Errors raised while reading, inspecting and using an uploaded model.

Every error is a :class:`ModelError` with a machine-readable ``code``, the HTTP ``status``
the service answers with, and a message that is a sentence a person can act on. Errors
cross process boundaries (the inspection sandbox), so each one pickles with all of its
attributes.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar


class ModelError(Exception):
    """The uploaded model cannot be used."""

    code: ClassVar[str] = "model_error"
    status: ClassVar[int] = 422

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default pickling replays only ``args``; keyword-only attributes
        # would be lost on the way back from the sandbox.
        return (_rebuild_error, (type(self), self.__dict__))

    def __str__(self) -> str:
        return self.message


def _rebuild_error(cls: type[ModelError], state: dict[str, Any]) -> ModelError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class UnsupportedModelFormat(ModelError):
    """The bytes are not any model format tabxai reads, or the format is not served."""

    code = "unsupported_format"
    status = 415


class UntrustedFormat(ModelError):
    """Pickle, joblib or TorchScript: loading such a file can run arbitrary code."""

    code = "untrusted_format"
    status = 415


class UntrustedType(ModelError):
    """A skops file holds a type outside the allowlist."""

    code = "untrusted_type"
    status = 422

    def __init__(self, message: str, *, types: list[str], details: dict[str, Any] | None = None):
        super().__init__(message, details=details)
        self.types = list(types)


class InvalidModel(ModelError):
    """The file is of a known format but truncated, corrupt or of an unsupported shape."""

    code = "invalid_model"
    status = 422


class ModelInspectionFailed(ModelError):
    """The inspection child process crashed, hung past its time limit or ran out of memory.

    ``reason`` is one of ``"crashed"``, ``"timeout"``, ``"memory"``.
    """

    code = "model_inspection_failed"
    status = 422

    def __init__(self, message: str, *, reason: str, details: dict[str, Any] | None = None):
        super().__init__(message, details=details)
        self.reason = reason


class FeatureMismatch(ModelError):
    """The dataset's columns do not give the model the features it needs."""

    code = "feature_mismatch"
    status = 422

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        extra: list[str] | None = None,
        type_clashes: list[str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.missing = list(missing or [])
        self.extra = list(extra or [])
        self.type_clashes = list(type_clashes or [])


class FeatureNamesRequired(ModelError):
    """The model has no feature names and was not uploaded to match columns by position."""

    code = "feature_names_required"
    status = 422


class TargetMismatch(ModelError):
    """The dataset's target column cannot be read as the model's target."""

    code = "target_mismatch"
    status = 422


class UnsupportedOutput(ModelError, ValueError):
    """The requested prediction output does not exist for this model (e.g. probabilities
    of a regression model)."""

    code = "unsupported_output"
    status = 422


_LIBRARY_LOG_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\]\s+\S+:\d+:\s*")


def first_line(error: BaseException) -> str:
    """The library's message, without its log prefix (time, source path), for a person."""
    lines = str(error).strip().splitlines()
    text = _LIBRARY_LOG_PREFIX.sub("", lines[0]) if lines else type(error).__name__
    return text.rstrip(". ")[:500]
