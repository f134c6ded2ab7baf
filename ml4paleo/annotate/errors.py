"""Errors of the annotation studio: a bad request (400), a part of the image it does not
have (404) and a request that cannot be served now (409)."""

from __future__ import annotations

__all__ = ["AnnotationConflict", "AnnotationError", "AnnotationNotFound"]


class AnnotationError(ValueError):
    """A submitted annotation cannot be used; the message says why, in one line."""


class AnnotationConflict(AnnotationError):
    """The job cannot take annotations now (no converted image yet, a conversion runs)."""


class AnnotationNotFound(AnnotationError):
    """A pyramid level or preview tile the image does not have (a read of it is a 404)."""
