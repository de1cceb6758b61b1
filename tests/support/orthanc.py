"""Orthanc from Debian as a DICOM peer, driven through its REST API."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.network import LOOPBACK, free_port, port_accepts_connections, wait_until

START_TIMEOUT_SECONDS = 30
REQUEST_TIMEOUT_SECONDS = 60


class OrthancPeer:
    """One Orthanc process with its own storage, ports and DICOM modalities.

    Call only inside :func:`tests.support.netns.isolated_network`, because
    Orthanc listens on every interface.
    """

    def __init__(self, workdir: Path, ae_title: str, modalities: dict[str, list[Any]]) -> None:
        self.workdir = workdir
        self.ae_title = ae_title
        self.http_port = free_port()
        self.dicom_port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "dicomvault-test-peer",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomModalities": modalities,
            "Plugins": [],
        }
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.log_path = workdir / "orthanc.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                ["Orthanc", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        ready = wait_until(
            lambda: (
                self.process.poll() is not None
                or (
                    port_accepts_connections(self.http_port)
                    and port_accepts_connections(self.dicom_port)
                )
            ),
            START_TIMEOUT_SECONDS,
        )
        if not ready or self.process.poll() is not None:
            self.stop()
            raise AssertionError(f"Orthanc did not start:\n{self.log_text()}")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Call the REST API on loopback and return the decoded JSON response."""
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{self.http_port}{path}", data=data, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(
                f"Orthanc {method} {path} failed with {exc.code}: {exc.read()!r}"
            ) from None
        return json.loads(payload) if payload else None

    def sop_instance_uids(self) -> set[str]:
        """Return the SOP Instance UIDs Orthanc stores."""
        uids = set()
        for instance_id in self.request("GET", "/instances"):
            tags = self.request("GET", f"/instances/{instance_id}/simplified-tags")
            uids.add(tags["SOPInstanceUID"])
        return uids

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
