"""Allow ``python -m dicomvault``."""

from __future__ import annotations

from dicomvault.cli import main

# The guard keeps worker processes of indexing tasks, which import this module
# when started with forkserver or spawn, from running the command line.
if __name__ == "__main__":
    main()
