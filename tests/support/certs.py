"""Test certificates from `dicomvault certs dev`, and the DCMTK options that use them."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli import run_cli
from tests.support.dcmtk import tls_options


class Certificates:
    """The files `dicomvault certs dev` wrote to one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = folder / "ca.pem"
        self.server = folder / "server.pem"
        self.server_key = folder / "server-key.pem"
        self.client = folder / "client.pem"
        self.client_key = folder / "client-key.pem"

    def client_options(self, ca: Path | None = None) -> list[str]:
        """DCMTK options to connect with this set's client certificate."""
        return tls_options(self.client_key, self.client, ca or self.ca)


def make_certificates(folder: Path) -> Certificates:
    """Run `dicomvault certs dev` to write a new set of certificates to ``folder``."""
    run = run_cli(["certs", "dev", "--out", str(folder)], folder.parent)
    assert run.returncode == 0, run.describe()
    return Certificates(folder)
