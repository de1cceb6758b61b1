"""The admin pages in chromium: indexing with live progress, nodes with C-ECHO, users, deletion."""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from playwright.sync_api import Browser, Page, expect
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.browser.conftest import (
    ACTION_TIMEOUT_MS,
    ADMIN_NAME,
    ADMIN_PASSWORD,
    DevCertificateFiles,
    log_in,
    save_screenshot,
)
from tests.support.datasets import make_instance
from tests.support.network import LOOPBACK
from tests.support.server import DicomvaultServer

pytestmark = pytest.mark.browser

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# Upper bound for indexing the bundled files (about 90), generous because
# the speed of CI machines varies.
INDEXING_TIMEOUT_MS = 120_000


@dataclass(frozen=True)
class AdminServer:
    """A server whose import root contains pydicom's files, and a second server to echo."""

    server: DicomvaultServer
    base_url: str
    import_folder: Path
    echo_target: DicomvaultServer
    stored: pydicom.Dataset


def _copy_test_files(folder: Path) -> int:
    """Copy pydicom's bundled DICOM files into ``folder``; return how many."""
    folder.mkdir(parents=True)
    copied = 0
    for path in sorted(TEST_FILES.glob("*.dcm")):
        shutil.copy(path, folder / path.name)
        copied += 1
    return copied


@pytest.fixture(scope="module")
def admin_server(
    tmp_path_factory: pytest.TempPathFactory, dev_certificates: DevCertificateFiles
) -> Iterator[AdminServer]:
    """Start the archive on HTTPS with an import root and an admin, and a second one to echo."""
    root = tmp_path_factory.mktemp("import-root")
    folder = root / "pydicom-files"
    assert _copy_test_files(folder) > 0
    config = f'[ingest]\nimport_roots = ["{root}"]\nsettle_seconds = 0\n'
    config += dev_certificates.https_config()
    server = DicomvaultServer(tmp_path_factory.mktemp("admin-server"), "", config=config)
    echo_target = DicomvaultServer(
        tmp_path_factory.mktemp("echo-target"), "", ae_title="ECHOTARGET"
    )
    try:
        server.start()
        echo_target.start()
        server.add_user(ADMIN_NAME, ADMIN_PASSWORD, role="admin")
        base_url = f"https://{LOOPBACK}:{server.http_port}"
        stored = _store(base_url, dev_certificates)
        yield AdminServer(server, base_url, folder, echo_target, stored)
    finally:
        echo_target.stop()
        server.stop()


def _store(base_url: str, certificates: DevCertificateFiles) -> pydicom.Dataset:
    """Store a new one-instance series over STOW-RS, as a file the archive may delete.

    Its UIDs are new, so the indexing test cannot add instances to its series.
    """
    ds = make_instance(PatientName="Delete^Me")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with certificates.client(base_url) as client:
        response = client.post(
            "/dicomweb/studies",
            content=buffer.getvalue(),
            headers={"Content-Type": "application/dicom"},
        )
    assert response.status_code == 200, response.text
    return ds


@pytest.fixture
def admin_page(browser: Browser, admin_server: AdminServer) -> Iterator[Page]:
    """A page logged in as the admin on the server of this module."""
    context = browser.new_context(
        base_url=admin_server.base_url,
        viewport={"width": 1280, "height": 860},
        ignore_https_errors=True,  # see tests/browser/conftest.py
    )
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    page = context.new_page()
    log_in(page, ADMIN_NAME, ADMIN_PASSWORD)
    yield page
    context.close()


def test_indexing_task_finishes(admin_page: Page, admin_server: AdminServer) -> None:
    page = admin_page
    page.goto("/console/admin/tasks")
    page.get_by_label("Folder or s3://bucket/prefix", exact=True).fill(
        str(admin_server.import_folder)
    )
    page.get_by_label("Mode", exact=True).select_option("import")
    page.get_by_role("button", name="Start indexing").click()

    expect(page.get_by_role("status")).to_contain_text(re.compile(r"Task \d+ queued"))
    row = page.locator("#tasks-table tbody tr").first
    # The list refreshes itself every second while the task runs.
    expect(row.locator(".task-status")).to_contain_text("completed", timeout=INDEXING_TIMEOUT_MS)
    indexed = int(row.locator(".task-indexed").inner_text())
    assert indexed > 0
    expect(row.get_by_role("button", name=re.compile("Cancel"))).to_have_count(0)
    save_screenshot(page, "admin-tasks")

    # Several bundled files share a SOP Instance UID, so the index has fewer
    # instances than files indexed; more than the one stored before is enough.
    page.goto("/console/admin/storage")
    assert int(page.locator("#usage-instances").inner_text()) > 1


def test_add_node_and_echo(admin_page: Page, admin_server: AdminServer) -> None:
    page = admin_page
    target = admin_server.echo_target
    page.goto("/console/admin/nodes")
    page.get_by_label("AE title", exact=True).fill(target.ae_title)
    page.get_by_label("Host", exact=True).fill(LOOPBACK)
    page.get_by_label("Port", exact=True).fill(str(target.port))
    page.get_by_label("Description", exact=True).fill("second archive")
    page.get_by_role("button", name="Add node").click()

    row = page.locator(f'tr[data-ae-title="{target.ae_title}"]')
    expect(row).to_be_visible()
    row.get_by_role("button", name="Echo", exact=True).click()

    expect(row.locator(".echo-ok")).to_contain_text(re.compile(r"Success in [\d.]+ ms"))
    save_screenshot(page, "admin-nodes")


def test_create_user(admin_page: Page) -> None:
    page = admin_page
    page.goto("/console/admin/users")
    page.get_by_label("Name", exact=True).fill("carol")
    page.get_by_label("Role", exact=True).select_option("user")
    page.get_by_label("Password", exact=True).fill("carol's password")
    page.get_by_role("button", name="Create user").click()

    expect(page.get_by_role("status")).to_contain_text("Created user carol (user).")
    expect(page.locator('tr[data-user="carol"]')).to_contain_text("user")


def test_delete_series_after_confirmation(admin_page: Page, admin_server: AdminServer) -> None:
    page = admin_page
    ds = admin_server.stored
    page.goto("/console/admin/storage")
    page.get_by_label("Study Instance UID", exact=True).fill(ds.StudyInstanceUID)
    page.get_by_label("Series Instance UID", exact=True).fill(ds.SeriesInstanceUID)
    page.get_by_role("button", name="Review the deletion").click()

    expect(page.get_by_role("heading", name="Delete series?")).to_be_visible()
    expect(page.locator("#delete-count")).to_have_text("1")
    page.get_by_role("button", name=re.compile(r"^Delete series")).click()

    expect(page.locator("#delete-result")).to_contain_text("1 stored files were deleted")
    page.goto(f"/console/admin/delete?study={ds.StudyInstanceUID}&series={ds.SeriesInstanceUID}")
    expect(page.get_by_role("alert")).to_contain_text("is indexed")
