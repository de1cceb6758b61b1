"""The servers under test: DCMTK storescp, Orthanc and dicomvault, each one process on loopback.

Each server gets a fresh working folder, listens on 127.0.0.1 (Orthanc 1.10
listens on every interface, so the runner must run inside a network
namespace that has only a loopback interface), and is stopped with SIGTERM.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from bench.clients import CALLING_AE, count_instances
from bench.loopback import LOOPBACK, accepts_connections, free_port, process_environment

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
KILL_TIMEOUT_SECONDS = 10.0
# Installed by the Debian package orthanc-dicomweb (tests/services.sh installs it).
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class ServerError(RuntimeError):
    """A server did not start, or failed while it was measured."""


def read_memory_kib(pid: int, field: str) -> int:
    """Return a memory field of /proc/PID/status ("VmHWM", "VmRSS") in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise ServerError(f"/proc/{pid}/status has no {field} line")


class Server:
    """One server process; subclasses define how to start it and count what it stored.

    Attributes
    ----------
    name : str
        The name printed in the tables.
    ae_title : str
        The called AE title clients use.
    port : int
        The DIMSE port on 127.0.0.1.
    """

    name = ""
    ae_title = ""
    indexes = True

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_memory_kib: int | None = None

    def command(self) -> list[str]:
        """Return the command line that starts the server."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """Return the server's environment."""
        return process_environment(nodelay=False)

    def ports(self) -> list[int]:
        """Return the ports that must accept connections before the server counts as started."""
        return [self.port]

    def count_instances(self) -> int:
        """Return the number of instances the server has stored."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the process and wait until its ports accept connections.

        Raises
        ------
        ServerError
            If the process exits first or its ports stay closed for
            START_TIMEOUT_SECONDS; the message has the end of its log.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.workdir,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not all(accepts_connections(port) for port in self.ports()):
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with code {self.process.returncode} while starting.\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"{self.name} did not accept connections on {LOOPBACK}:{self.port} "
                    f"within {START_TIMEOUT_SECONDS:.0f} s.\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Record the peak resident memory, then stop the process (SIGTERM, then SIGKILL)."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self.peak_memory_kib = read_memory_kib(process.pid, "VmHWM")
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=KILL_TIMEOUT_SECONDS)
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        """Return the last `lines` lines of the server's log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Storescp(Server):
    """DCMTK's storescp: writes each received instance to a file and indexes nothing.

    It runs with TCP_NODELAY=1, so its own C-STORE responses are not held
    back by Nagle's algorithm. With ``fork`` it handles each association in
    a child process, so that parallel associations are received in
    parallel. Its peak memory then covers only the parent and is not reported.
    """

    name = "storescp"
    ae_title = "STORESCP"
    indexes = False

    def __init__(self, workdir: Path, fork: bool = False) -> None:
        super().__init__(workdir)
        self.fork = fork
        self.output_dir = workdir / "received"

    def command(self) -> list[str]:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # +xa accepts every transfer syntax DCMTK supports, for compressed corpora.
        command = ["storescp", "-aet", self.ae_title, "-od", str(self.output_dir), "+xa"]
        if self.fork:
            command.append("--fork")
        return [*command, str(self.port)]

    def environment(self) -> dict[str, str]:
        return process_environment(nodelay=True)

    def count_instances(self) -> int:
        return sum(1 for path in self.output_dir.iterdir() if path.is_file())

    def clear(self) -> None:
        """Remove the files received so far."""
        for path in self.output_dir.iterdir():
            path.unlink()


class Orthanc(Server):
    """Orthanc from Debian with its defaults: SQLite index, files under its storage folder.

    The configuration sets only folders, ports and AE title, and what the
    benchmarks need: DicomCheckCalledAet off, C-MOVE from any calling AE
    (movescu is not a registered modality), and the C-MOVE destinations.
    With ``dicomweb``, it loads the DICOMweb plugin of the Debian package
    orthanc-dicomweb, serving DICOMweb under ``DICOMWEB_ROOT``.
    """

    name = "Orthanc"
    ae_title = "ORTHANC"
    DICOMWEB_ROOT = "/dicom-web"

    def __init__(
        self,
        workdir: Path,
        modalities: Mapping[str, tuple[str, int]] | None = None,
        dicomweb: bool = False,
    ) -> None:
        super().__init__(workdir)
        self.http_port = free_port()
        self.modalities = dict(modalities or {})
        self.dicomweb = dicomweb
        self.config_path = workdir / "orthanc.json"

    def command(self) -> list[str]:
        # Orthanc accepts C-FIND only from registered modalities. The
        # benchmark's SCU is registered with a port nothing listens on.
        modalities = {CALLING_AE: (LOOPBACK, 1), **self.modalities}
        config = {
            "Name": "dicomvault-bench",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {
                ae.lower(): [ae, host, port] for ae, (host, port) in modalities.items()
            },
            "Plugins": [],
        }
        if self.dicomweb:
            config["Plugins"] = [str(ORTHANC_DICOMWEB_PLUGIN)]
            # Host and Ssl set the scheme and host of the URLs in responses.
            config["DicomWeb"] = {
                "Enable": True,
                "Root": f"{self.DICOMWEB_ROOT}/",
                "EnableWado": False,
                "Host": f"{LOOPBACK}:{self.http_port}",
                "Ssl": False,
            }
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return ["Orthanc", str(self.config_path)]

    def environment(self) -> dict[str, str]:
        return process_environment(nodelay=True)

    def ports(self) -> list[int]:
        return [self.port, self.http_port]

    def count_instances(self) -> int:
        return count_instances(self.port, self.ae_title)


class Dicomvault(Server):
    """dicomvault with its embedded defaults: SQLite index and files under the data folder.

    It serves its HTTP API, DICOMweb under ``DICOMWEB_ROOT`` included, on ``http_port``.
    """

    name = "dicomvault"
    ae_title = "DICOMVAULT"
    DICOMWEB_ROOT = "/dicomweb"

    def __init__(self, workdir: Path, nodes: Mapping[str, tuple[str, int]] | None = None) -> None:
        super().__init__(workdir)
        self.http_port = free_port()
        self.data_dir = workdir / "data"
        self.nodes = dict(nodes or {})

    def command(self) -> list[str]:
        for ae_title, (host, port) in self.nodes.items():
            self._register_node(ae_title, host, port)
        return [
            *self._cli(),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--ae-title",
            self.ae_title,
            "--http-port",
            str(self.http_port),
        ]

    def ports(self) -> list[int]:
        return [self.port, self.http_port]

    def count_instances(self) -> int:
        return count_instances(self.port, self.ae_title)

    def _cli(self) -> list[str]:
        return [sys.executable, "-m", "dicomvault"]

    def _register_node(self, ae_title: str, host: str, port: int) -> None:
        completed = subprocess.run(
            [
                *self._cli(),
                "node",
                "add",
                ae_title,
                "--host",
                host,
                "--port",
                str(port),
                "--data-dir",
                str(self.data_dir),
            ],
            capture_output=True,
            text=True,
            env=self.environment(),
            timeout=60,
            check=False,
        )
        if completed.returncode != 0:
            raise ServerError(
                f"dicomvault node add {ae_title} failed ({completed.returncode}):\n"
                f"{completed.stdout}{completed.stderr}"
            )
