"""Storage back-ends for the bytes of stored instances."""

from __future__ import annotations

from dicomvault.storage.base import Storage, StorageError, StorageFullError

__all__ = ["Storage", "StorageError", "StorageFullError"]
