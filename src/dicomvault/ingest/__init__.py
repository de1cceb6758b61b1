"""Bulk indexing of files already on disk: scan a folder, read headers in parallel, index."""
