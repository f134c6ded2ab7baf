"""Ids of jobs, models and segmentations: random, URL-safe, safe as file names."""

from __future__ import annotations

import secrets

__all__ = ["new_id"]


def new_id() -> str:
    """A new job / model / segmentation id: > 128 random bits, URL-safe (23 characters).

    Ids never start with ``-``, so they can't be mistaken for a command-line option
    (``ml4paleo jobs show ID``) and pass every path-component check.

    Examples
    --------
    >>> len(new_id()), new_id() != new_id()
    (23, True)
    """
    while True:
        candidate = secrets.token_urlsafe(17)
        if not candidate.startswith("-"):
            return candidate
