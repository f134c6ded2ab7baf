"""Errors of the annotation studio: a bad request (400) and a request that cannot be served now (409)."""

from __future__ import annotations

__all__ = ["AnnotationConflict", "AnnotationError"]


class AnnotationError(ValueError):
    """A submitted annotation cannot be used; the message says why, in one line."""


class AnnotationConflict(AnnotationError):
    """The job cannot take annotations now (no converted image yet, a conversion runs)."""
