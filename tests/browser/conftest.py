"""Fixtures for browser tests: a real `dicomvault serve`, Debian's chromium and logged-in pages.

The server serves HTTPS on a loopback port, with the certificates of
`dicomvault certs dev`, SQLite, an admin, a user with the user role and a
few of pydicom's bundled files, stored over STOW-RS. Pages are driven by
Playwright through /usr/bin/chromium, headless, with background networking
off; Playwright never downloads a browser.

Chromium accepts the dev certificate (ignore_https_errors) rather than
trusting the dev CA, which would need a certificate database in its
profile. The HTTPS tests in tests/integration/test_tls.py check the chain
and the host name, with httpx and the dev CA.

Set DICOMVAULT_SCREENSHOTS to a folder (docs/screenshots) to have the tests
save screenshots of the main pages there.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from dicomvault import dev_certs
from tests.support.network import LOOPBACK
from tests.support.server import DicomvaultServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS_VARIABLE = "DICOMVAULT_SCREENSHOTS"
# Timeouts of Playwright actions and assertions, in milliseconds.
ACTION_TIMEOUT_MS = 15_000
HTTP_TIMEOUT_SECONDS = 30

ADMIN_NAME = "admin"
ADMIN_PASSWORD = "admin password for browser tests"
USER_NAME = "viewer"
USER_PASSWORD = "viewer password for browser tests"

# Bundled with pydicom (pydicom/data/test_files): two monochrome single-frame
# images, a two-frame RGB image (RLE Lossless) and an RT Plan without pixels.
STORED_FILES = ("CT_small.dcm", "MR_small.dcm", "SC_rgb_rle_2frame.dcm", "rtplan.dcm")
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@dataclasses.dataclass(frozen=True)
class StoredInstance:
    """The UIDs and patient of a file stored on the test server."""

    file_name: str
    patient_name: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str

    @property
    def instance_path(self) -> str:
        """The console path of the instance page."""
        return (
            f"/console/studies/{self.study_instance_uid}/series/{self.series_instance_uid}"
            f"/instances/{self.sop_instance_uid}"
        )


@dataclasses.dataclass(frozen=True)
class DevCertificateFiles:
    """The CA certificate, and the server's certificate and key, of `dicomvault certs dev`."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def https_config(self) -> str:
        """The [http] table of a configuration file that serves HTTPS with these files."""
        return f'[http]\ntls_cert_file = "{self.server_cert}"\ntls_key_file = "{self.server_key}"\n'

    def client(self, base_url: str) -> httpx.Client:
        """An HTTP client for ``base_url`` that trusts the dev CA only."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        return httpx.Client(base_url=base_url, verify=context, timeout=HTTP_TIMEOUT_SECONDS)


@pytest.fixture(scope="session")
def dev_certificates(tmp_path_factory: pytest.TempPathFactory) -> DevCertificateFiles:
    """Certificates written once per session by `dicomvault certs dev`."""
    folder = tmp_path_factory.mktemp("certs") / "dev"
    completed = subprocess.run(
        [sys.executable, "-m", "dicomvault", "certs", "dev", "--out", str(folder)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HTTP_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return DevCertificateFiles(
        folder / dev_certs.CA_CERT, folder / dev_certs.SERVER_CERT, folder / dev_certs.SERVER_KEY
    )


@dataclasses.dataclass(frozen=True)
class ConsoleServer:
    """The running test server, its base URL and what it stores, by file name."""

    server: DicomvaultServer
    base_url: str
    stored: dict[str, StoredInstance]


def _store(base_url: str, certificates: DevCertificateFiles) -> dict[str, StoredInstance]:
    stored = {}
    with certificates.client(base_url) as client:
        for name in STORED_FILES:
            path = TEST_FILES / name
            response = client.post(
                "/dicomweb/studies",
                content=path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            assert response.status_code == 200, response.text
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            stored[name] = StoredInstance(
                name,
                str(ds.PatientName),
                ds.StudyInstanceUID,
                ds.SeriesInstanceUID,
                ds.SOPInstanceUID,
            )
    return stored


@pytest.fixture(scope="session")
def console_server(
    tmp_path_factory: pytest.TempPathFactory, dev_certificates: DevCertificateFiles
) -> Iterator[ConsoleServer]:
    """An HTTPS `dicomvault serve` with an admin, a user and the STORED_FILES, for the session."""
    server = DicomvaultServer(
        tmp_path_factory.mktemp("console-server"),
        index_url="",
        config=dev_certificates.https_config(),
    )
    server.start()
    try:
        server.add_user(ADMIN_NAME, ADMIN_PASSWORD, role="admin")
        server.add_user(USER_NAME, USER_PASSWORD, role="user")
        base_url = f"https://{LOOPBACK}:{server.http_port}"
        yield ConsoleServer(server, base_url, _store(base_url, dev_certificates))
    finally:
        server.stop()


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's chromium, headless; the tests fail at once when it is not installed."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found. Run 'bash tests/services.sh' as root to install "
            "Debian's chromium package."
        )
    chromium = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser: Browser, console_server: ConsoleServer) -> Iterator[Page]:
    """A new page in a fresh browser context (no cookies), at laptop size, on the server."""
    context = browser.new_context(
        base_url=console_server.base_url,
        viewport={"width": 1280, "height": 860},
        accept_downloads=True,
        ignore_https_errors=True,  # the dev CA is not in chromium's store; see the module doc
    )
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    expect.set_options(timeout=ACTION_TIMEOUT_MS)
    new_page = context.new_page()
    yield new_page
    context.close()


def log_in(page: Page, name: str, password: str) -> None:
    """Log in through the console's login form and wait for the search page."""
    page.goto("/console/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Search", exact=True)).to_be_visible()


@pytest.fixture
def admin_page(page: Page) -> Page:
    """A page logged in as the admin, on the search page."""
    log_in(page, ADMIN_NAME, ADMIN_PASSWORD)
    return page


@pytest.fixture
def user_page(page: Page) -> Page:
    """A page logged in as a user with the user role, on the search page."""
    log_in(page, USER_NAME, USER_PASSWORD)
    return page


def save_screenshot(page: Page, name: str) -> None:
    """Save a PNG of the page as NAME.png in $DICOMVAULT_SCREENSHOTS, when it is set."""
    folder = os.environ.get(SCREENSHOTS_VARIABLE)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=False)
