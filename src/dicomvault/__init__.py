"""dicomvault: an open-source PACS with DIMSE services and an SQL index."""

from __future__ import annotations

__version__ = "0.1.0"
