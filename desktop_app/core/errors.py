"""Errors a user can cause: each carries a one-line message and a hint."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; shown with its hint, never a crash."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class JobCancelled(Exception):
    """The user cancelled a job: not an error, so not a UserError. The one class every layer raises and catches."""


class InvalidRequest(UserError):
    """A parameter outside its range."""


class ImageError(UserError):
    """An image or mask file that cannot be used."""


class ModelError(UserError):
    """A model that cannot be found or loaded."""


class OutOfMemory(UserError):
    """The device ran out of memory for this job."""


class HistoryError(UserError):
    """The history could not be read or written."""
