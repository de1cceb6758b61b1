"""Run `dicomvault serve` as a subprocess on a loopback port for the tests."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import httpx

from tests.support.network import LOOPBACK, free_port, port_accepts_connections, wait_until

DEFAULT_AE_TITLE = "DICOMVAULT"
START_TIMEOUT_SECONDS = 30.0
# A test ends with no association in flight, so a healthy server exits promptly
# on SIGTERM. test_serve_lifecycle checks that exit, so teardown only bounds
# the wait before SIGKILL.
STOP_TIMEOUT_SECONDS = 5.0
KILL_TIMEOUT_SECONDS = 5.0

# Servers started and not yet stopped. The failure report hook in
# tests/integration/conftest.py attaches their logs to failed tests.
LIVE_SERVERS: list[DicomvaultServer] = []


def free_port_except(*taken: int | None) -> int:
    """Return a free port from :func:`free_port` that is not in ``taken``."""
    port = free_port()
    while port in taken:
        port = free_port()
    return port


class ServerStartError(RuntimeError):
    """`dicomvault serve` exited or did not accept connections in time."""


class DicomvaultServer:
    """One `dicomvault serve` process with its own port and data directory.

    Parameters
    ----------
    workdir : Path
        Directory for the server's log and configuration file. The data
        directory defaults to ``workdir / "data"``, left for the server to create.
    index_url : str
        Value of ``--index-url``; empty means the embedded SQLite default.
    config : str, optional
        TOML text written to a file and passed with ``--config``.
    env : Mapping, optional
        Extra environment variables. Variables named DICOMVAULT_* from the
        test runner's environment are never passed on.
    ae_title : str
        Value of ``--ae-title``.
    data_dir : Path, optional
        Value of ``--data-dir``, to start again on the data of an earlier server.
    port : int, optional
        Value of ``--port``; a free port by default. 0 opens no plain DIMSE port.
    tls_port : int, optional
        Value of ``--tls-port``; the configuration must name the certificate files.
    extra_args : Sequence of str
        More options appended to the command line.
    """

    def __init__(
        self,
        workdir: Path,
        index_url: str,
        *,
        config: str | None = None,
        env: Mapping[str, str] | None = None,
        ae_title: str = DEFAULT_AE_TITLE,
        data_dir: Path | None = None,
        port: int | None = None,
        tls_port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.index_url = index_url
        self.ae_title = ae_title
        self.data_dir = data_dir if data_dir is not None else workdir / "data"
        # free_port closes its socket, so two calls may return the same port.
        self.port = port if port is not None else free_port_except(tls_port)
        self.tls_port = tls_port
        self.http_port = free_port_except(self.port, tls_port)
        self.log_path = workdir / "server.log"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = workdir / "dicomvault.toml"
            self.config_path.write_text(config, encoding="utf-8")
        self.env = dict(env or {})
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.killed = False

    @property
    def command(self) -> list[str]:
        """The command line that starts the server."""
        command = [
            sys.executable,
            "-m",
            "dicomvault",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--ae-title",
            self.ae_title,
            "--host",
            LOOPBACK,
            "--http-port",
            str(self.http_port),
        ]
        if self.index_url:
            command += ["--index-url", self.index_url]
        if self.config_path is not None:
            command += ["--config", str(self.config_path)]
        if self.tls_port is not None:
            command += ["--tls-port", str(self.tls_port)]
        return command + self.extra_args

    @property
    def listening_ports(self) -> list[int]:
        """The DIMSE and HTTP ports the server opens."""
        return [port for port in (self.port, self.tls_port, self.http_port) if port]

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while the process runs or before it starts."""
        return None if self.process is None else self.process.poll()

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Start the process and wait until its DIMSE and HTTP ports accept connections.

        The server opens its HTTP port after its DIMSE port, so waiting for
        the DIMSE port alone lets an HTTP request arrive too early.

        Raises
        ------
        ServerStartError
            If the process exits first, or the ports do not accept
            connections within `timeout` seconds. The message has the log.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
        env.update(self.env)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )
        LIVE_SERVERS.append(self)

        process = self.process
        ready = wait_until(
            lambda: (
                process.poll() is not None
                or all(port_accepts_connections(port) for port in self.listening_ports)
            ),
            timeout,
        )
        if process.poll() is not None:
            self._forget()
            raise ServerStartError(
                f"dicomvault serve exited with code {process.returncode} before accepting "
                f"connections on {LOOPBACK}:{self.port}.\n{self.describe()}"
            )
        if not ready:
            self.stop()
            raise ServerStartError(
                f"dicomvault serve did not accept connections on {LOOPBACK}:{self.port} "
                f"(DIMSE) and {LOOPBACK}:{self.http_port} (HTTP) within {timeout:.0f} s."
                f"\n{self.describe()}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """Send SIGTERM, wait up to `timeout` seconds, then SIGKILL. Return the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                process.kill()
                process.wait(timeout=KILL_TIMEOUT_SECONDS)
        self._forget()
        return process.returncode

    def add_user(self, name: str, password: str, role: str = "admin") -> None:
        """Create a user with `dicomvault user add`, on the server's index."""
        command = [*self.command[:3], "user", "add", name, "--role", role, "--password-stdin"]
        command += ["--data-dir", str(self.data_dir)]
        if self.index_url:
            command += ["--index-url", self.index_url]
        if self.config_path is not None:
            command += ["--config", str(self.config_path)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
        completed = subprocess.run(
            command,
            input=f"{password}\n".encode(),
            capture_output=True,
            env={**env, **self.env},
            timeout=60,
            check=False,
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr

    @contextlib.contextmanager
    def admin_client(self, timeout: float = 30) -> Iterator[httpx.Client]:
        """Yield an HTTP client logged in as a new admin user, sending the CSRF token."""
        password = "admin password for tests"
        self.add_user("testadmin", password)
        base_url = f"http://{LOOPBACK}:{self.http_port}"
        with httpx.Client(base_url=base_url, timeout=timeout) as client:
            response = client.post("/api/login", json={"name": "testadmin", "password": password})
            assert response.status_code == 200, response.text
            client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
            yield client

    def log_text(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        """The command and the log, for assertion messages and failure reports."""
        return f"Command: {shlex.join(self.command)}\nServer log:\n{self.log_text()}"

    def _forget(self) -> None:
        if self in LIVE_SERVERS:
            LIVE_SERVERS.remove(self)


class ServerFactory:
    """Starts servers on demand and stops all of them in :meth:`stop_all`.

    Parameters
    ----------
    make_workdir : Callable
        Returns a new empty directory for each server.
    new_index_url : Callable
        Returns the ``--index-url`` for a server started without one: empty
        for SQLite, or the URL of a new PostgreSQL database, so that servers
        never share an index unless a test passes the same URL to both.
    """

    def __init__(self, make_workdir: Callable[[], Path], new_index_url: Callable[[], str]) -> None:
        self._make_workdir = make_workdir
        self._new_index_url = new_index_url
        self.servers: list[DicomvaultServer] = []

    def __call__(
        self,
        *,
        config: str | None = None,
        env: Mapping[str, str] | None = None,
        ae_title: str = DEFAULT_AE_TITLE,
        data_dir: Path | None = None,
        index_url: str | None = None,
        port: int | None = None,
        tls_port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> DicomvaultServer:
        """Start a server and return it once its ports accept connections."""
        server = DicomvaultServer(
            self._make_workdir(),
            self._new_index_url() if index_url is None else index_url,
            config=config,
            env=env,
            ae_title=ae_title,
            data_dir=data_dir,
            port=port,
            tls_port=tls_port,
            extra_args=extra_args,
        )
        self.servers.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        """Stop every server this factory started that still runs."""
        for server in self.servers:
            server.stop()
