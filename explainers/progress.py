"""How a long computation reports progress and learns that it should stop."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Cancelled", "ProgressCallback", "no_progress"]


class Cancelled(Exception):
    """Raised by a progress callback when the job was cancelled; the method stops."""


class ProgressCallback(Protocol):
    def __call__(self, fraction: float, stage: str) -> None:
        """Report ``fraction`` (0..1) done in ``stage``; may raise :class:`Cancelled`."""


def no_progress(fraction: float, stage: str) -> None:
    """A callback that ignores progress: for notebooks and tests."""
