"""Allow ``python -m dicomvault``."""

from __future__ import annotations

from dicomvault.cli import main

main()
