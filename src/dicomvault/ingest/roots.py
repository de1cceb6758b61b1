"""Check that a folder or bucket prefix to index lies under a configured import root."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dicomvault.ingest.bucket import BucketLocation, parse_bucket_url


class PathNotAllowedError(ValueError):
    """The folder is outside every import root, or does not exist.

    ``not_a_folder`` is True when the path is under a root but is not an
    existing folder.
    """

    def __init__(self, message: str, not_a_folder: bool = False) -> None:
        super().__init__(message)
        self.not_a_folder = not_a_folder


def resolve_folder(path: str | Path, roots: Sequence[Path]) -> Path:
    """Return ``path`` resolved, after checking that it is a folder under an import root.

    Symbolic links and '..' are resolved before the check, so neither can
    lead out of the roots. ``roots`` must already be resolved.

    Raises
    ------
    PathNotAllowedError
        If no import root is configured, the path is outside all of them, or
        it is not an existing folder. The message names the path and the roots.
    """
    text = str(path)
    if not text.strip():
        raise PathNotAllowedError("The folder to index is empty; give a path", not_a_folder=True)
    if "://" in text:
        raise PathNotAllowedError(
            f"Cannot index {text}: only folders and s3://bucket/prefix URLs (in lower case) "
            "can be indexed",
            not_a_folder=True,
        )
    if not roots:
        raise PathNotAllowedError(
            f"Cannot index {text}: no import roots are configured; list the folders that "
            "may be indexed in [ingest] import_roots or DICOMVAULT_INGEST_IMPORT_ROOTS"
        )
    resolved = Path(text).expanduser().resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        names = ", ".join(str(root) for root in roots)
        raise PathNotAllowedError(
            f"Cannot index {text} (resolved to {resolved}): it is not under an import root "
            f"({names}); add a root to [ingest] import_roots or choose a folder under one"
        )
    if not resolved.is_dir():
        raise PathNotAllowedError(f"Cannot index {text}: no such folder", not_a_folder=True)
    return resolved


def resolve_bucket(url: str, allowed: Sequence[str]) -> BucketLocation:
    """Return the bucket prefix of ``url`` after checking it against ``ingest.import_buckets``.

    Raises
    ------
    PathNotAllowedError
        If the URL is not a valid s3:// URL (``not_a_folder`` set), no
        bucket is allowed, or the prefix is outside every allowed one.
    """
    try:
        location = parse_bucket_url(url)
    except ValueError as exc:
        raise PathNotAllowedError(str(exc), not_a_folder=True) from None
    if not allowed:
        raise PathNotAllowedError(
            f"Cannot index {url}: no bucket may be indexed; list the bucket prefixes that "
            "may be indexed in [ingest] import_buckets or DICOMVAULT_INGEST_IMPORT_BUCKETS"
        )
    for text in allowed:
        permitted = parse_bucket_url(text)
        if location.bucket == permitted.bucket and location.prefix.startswith(permitted.prefix):
            return location
    advice = "add it to [ingest] import_buckets or choose one under them"
    if any(text.rstrip("/") == location.url for text in allowed):
        advice = f"end the URL with '/' ({location.url}/) to index the allowed prefix"
    raise PathNotAllowedError(
        f"Cannot index {url}: it is not under an allowed bucket prefix "
        f"({', '.join(allowed)}); {advice}"
    )
