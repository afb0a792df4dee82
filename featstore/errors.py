"""Typed errors for everything a user can cause.

The CLI maps every ``FeatstoreError`` to a one-line message and a non-zero
exit code; the API maps them to 4xx responses. Each subclass names what went
wrong so callers can catch exactly what they can handle.
"""

from __future__ import annotations


class FeatstoreError(Exception):
    """Base class of all errors a user of featstore can cause."""

    exit_code: int = 1


class StoreError(FeatstoreError):
    """The feature store cannot be opened or is not a featstore store."""


class ReadOnlyStoreError(StoreError):
    """A write was attempted on a store opened with ``mode="r"``."""


class UnknownDatasetError(StoreError, KeyError):
    """The store holds no dataset of that name."""


class UnknownEncoderError(StoreError, KeyError):
    """The dataset holds no features of that encoder."""


class UnknownLayerError(StoreError, KeyError):
    """The encoder's features were not stored for that layer."""


class UnknownVideoError(StoreError, KeyError):
    """No committed features for that video (or that layer of it)."""


class InvalidFeaturesError(FeatstoreError, ValueError):
    """Features handed to the writer have the wrong dtype, shape or values."""


class EncoderMismatchError(StoreError):
    """A writer's encoder metadata disagrees with what the store already holds."""


class ManifestError(FeatstoreError, ValueError):
    """A dataset manifest is malformed (missing columns, duplicate ids, ...)."""


class CorruptStoreError(StoreError):
    """Stored data disagrees with its commit record (found by ``verify`` or a read)."""
