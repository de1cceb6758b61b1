"""The console in chromium: log in, search, drill down, view an image, download, log out."""

from __future__ import annotations

import io
import re
import zipfile

import pytest
from playwright.sync_api import Page, expect

from dicomvault.web.identity import SESSION_COOKIE
from tests.browser.conftest import (
    ADMIN_NAME,
    ADMIN_PASSWORD,
    ConsoleServer,
    log_in,
    save_screenshot,
)

pytestmark = pytest.mark.browser

CT_FILE = "CT_small.dcm"
MULTI_FRAME_FILE = "SC_rgb_rle_2frame.dcm"
NO_IMAGE_FILE = "rtplan.dcm"


def image_loaded(page: Page, selector: str) -> bool:
    """Return whether the image of ``selector`` finished loading with a decoded picture."""
    return bool(
        page.eval_on_selector(selector, "image => image.complete && image.naturalWidth > 0")
    )


def wait_for_image(page: Page, selector: str) -> None:
    page.wait_for_function(
        "selector => { const image = document.querySelector(selector);"
        " return image && image.complete && image.naturalWidth > 0; }",
        arg=selector,
    )


def search_by_name(page: Page, pattern: str) -> None:
    page.get_by_label("Patient name").fill(pattern)
    page.get_by_role("button", name="Search", exact=True).click()


class TestLogin:
    def test_login_page(self, page: Page) -> None:
        page.goto("/console")

        expect(page).to_have_url(re.compile(r"/console/login"))
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        save_screenshot(page, "login")

    def test_wrong_password(self, page: Page) -> None:
        page.goto("/console/login")
        page.get_by_label("User name").fill(ADMIN_NAME)
        page.get_by_label("Password").fill("not the password")
        page.get_by_role("button", name="Log in").click()

        expect(page.get_by_role("alert")).to_have_text("Invalid user name or password.")

    def test_log_in_and_out(self, page: Page) -> None:
        log_in(page, ADMIN_NAME, ADMIN_PASSWORD)
        page.get_by_role("button", name="Log out").click()

        expect(page.get_by_role("status")).to_have_text("You are logged out.")
        page.goto("/console/search")
        expect(page).to_have_url(re.compile(r"/console/login\?next="))

    def test_session_cookie_is_secure_over_https(self, page: Page) -> None:
        log_in(page, ADMIN_NAME, ADMIN_PASSWORD)

        [cookie] = [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
        assert page.url.startswith("https://")
        assert cookie["secure"] is True
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"

    def test_admin_sees_management_menu(self, admin_page: Page) -> None:
        admin_page.get_by_text("Management").click()

        expect(admin_page.get_by_role("link", name="Remote nodes")).to_be_visible()


class TestSearch:
    def test_name_with_wildcard(self, admin_page: Page) -> None:
        search_by_name(admin_page, "compressedsamples*")

        rows = admin_page.locator("#results tbody tr")
        expect(rows).to_have_count(2)
        expect(admin_page.locator("#results")).to_contain_text("Showing 1–2 of 2")
        expect(admin_page.locator("#results")).to_contain_text("CompressedSamples, CT1")
        expect(admin_page).to_have_url(re.compile(r"PatientName=compressedsamples"))
        save_screenshot(admin_page, "search-results")

    def test_sort_by_column(self, admin_page: Page) -> None:
        search_by_name(admin_page, "*")
        admin_page.get_by_role("link", name="Study date").click()
        first_ascending = admin_page.locator("#results tbody tr").first.inner_text()
        admin_page.get_by_role("link", name="Study date ▲").click()

        expect(admin_page.get_by_role("link", name="Study date ▼")).to_be_visible()
        assert admin_page.locator("#results tbody tr").first.inner_text() != first_ascending

    def test_query_language_error_has_caret(self, admin_page: Page) -> None:
        admin_page.get_by_label("Query language").fill("Modality:CT AND (PatientID:X")
        admin_page.get_by_role("button", name="Search", exact=True).click()

        error = admin_page.locator("#search-error")
        expect(error).to_contain_text("error at column 29")
        expect(error.locator("pre")).to_have_text("Modality:CT AND (PatientID:X\n" + " " * 28 + "^")

    def test_query_language_search(self, admin_page: Page) -> None:
        admin_page.get_by_label("Query language").fill(
            "PatientName:Compressed* AND Modality:MR AND StudyDate:[20040101 TO 20041231]"
        )
        admin_page.get_by_role("button", name="Search", exact=True).click()

        expect(admin_page.locator("#results tbody tr")).to_have_count(1)
        expect(admin_page.locator("#results")).to_contain_text("CompressedSamples, MR1")

    def test_csv_export(self, admin_page: Page) -> None:
        search_by_name(admin_page, "compressedsamples*")

        with admin_page.expect_download() as download_info:
            admin_page.get_by_role("link", name="Export CSV").click()
        text = download_info.value.path().read_text(encoding="utf-8")

        assert text.splitlines()[0].startswith("PatientID,")
        assert len(text.splitlines()) == 3


class TestDrillDown:
    def test_open_study(self, admin_page: Page, console_server: ConsoleServer) -> None:
        search_by_name(admin_page, "CompressedSamples^CT1")
        admin_page.get_by_role("link", name="Open study").click()

        expect(admin_page.get_by_role("heading", level=2, name="Series")).to_be_visible()
        wait_for_image(admin_page, ".series-card img")
        assert image_loaded(admin_page, ".series-card img")
        save_screenshot(admin_page, "study")

    def test_patient_page(self, admin_page: Page) -> None:
        search_by_name(admin_page, "CompressedSamples^CT1")
        admin_page.locator("#results").get_by_role("link", name="CompressedSamples, CT1").click()

        expect(admin_page.get_by_role("heading", name="CompressedSamples, CT1")).to_be_visible()
        expect(admin_page.locator("dl.facts")).to_contain_text("1CT1")

    def test_series_to_instance(self, admin_page: Page, console_server: ConsoleServer) -> None:
        stored = console_server.stored[CT_FILE]
        admin_page.goto(f"/console/studies/{stored.study_instance_uid}")
        admin_page.locator(".series-card p a").first.click()
        admin_page.get_by_role("link", name=re.compile(r"^Instance ")).first.click()

        expect(admin_page).to_have_url(re.compile(stored.sop_instance_uid))


class TestInstance:
    def test_viewer_and_tags(self, admin_page: Page, console_server: ConsoleServer) -> None:
        admin_page.goto(console_server.stored[CT_FILE].instance_path)

        wait_for_image(admin_page, "#viewer-image")
        row = admin_page.locator("#tag-table > tbody > tr", has_text="(0010,0010)")
        expect(row).to_contain_text("PatientName")
        expect(row).to_contain_text("PN")
        expect(row).to_contain_text("CompressedSamples^CT1")
        save_screenshot(admin_page, "instance-viewer")

    def test_window_level_inputs(self, admin_page: Page, console_server: ConsoleServer) -> None:
        admin_page.goto(console_server.stored[CT_FILE].instance_path)
        wait_for_image(admin_page, "#viewer-image")
        admin_page.get_by_label("Window center").fill("40")
        admin_page.get_by_label("Window width").fill("400")
        admin_page.get_by_label("Window width").press("Enter")

        expect(admin_page.locator("#viewer-image")).to_have_attribute(
            "src", re.compile(r"window=40%2C400$")
        )
        wait_for_image(admin_page, "#viewer-image")

    def test_window_level_drag(self, admin_page: Page, console_server: ConsoleServer) -> None:
        admin_page.goto(console_server.stored[CT_FILE].instance_path)
        wait_for_image(admin_page, "#viewer-image")
        width_before = admin_page.get_by_label("Window width").input_value()
        box = admin_page.locator("#viewer").bounding_box()
        assert box is not None
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        admin_page.mouse.move(x, y)
        admin_page.mouse.down()
        admin_page.mouse.move(x + 120, y + 40, steps=5)
        admin_page.mouse.up()

        assert admin_page.get_by_label("Window width").input_value() != width_before
        expect(admin_page.locator("#viewer-image")).to_have_attribute("src", re.compile(r"window="))
        wait_for_image(admin_page, "#viewer-image")

    def test_zoom(self, admin_page: Page, console_server: ConsoleServer) -> None:
        admin_page.goto(console_server.stored[CT_FILE].instance_path)
        admin_page.get_by_role("slider", name="Zoom").fill("2")

        expect(admin_page.locator("#zoom-output")).to_have_text("200%")
        zoom = admin_page.eval_on_selector("#viewer", "v => v.style.getPropertyValue('--zoom')")
        assert zoom == "2"

    def test_frame_slider(self, admin_page: Page, console_server: ConsoleServer) -> None:
        admin_page.goto(console_server.stored[MULTI_FRAME_FILE].instance_path)
        wait_for_image(admin_page, "#viewer-image")
        admin_page.get_by_role("slider", name="Frame").fill("2")

        expect(admin_page.locator("#frame-output")).to_have_text("2 / 2")
        expect(admin_page.locator("#viewer-image")).to_have_attribute(
            "src", re.compile(r"/frames/2$")
        )
        wait_for_image(admin_page, "#viewer-image")

    def test_sequence_expands(self, admin_page: Page, console_server: ConsoleServer) -> None:
        admin_page.goto(console_server.stored[NO_IMAGE_FILE].instance_path)
        row = admin_page.locator("#tag-table > tbody > tr", has_text="FractionGroupSequence")
        row.locator("summary").first.click()

        expect(row.locator(".nested").first).to_be_visible()
        expect(row.locator(".nested").first).to_contain_text("NumberOfFractionsPlanned")
        expect(admin_page.get_by_text("This instance has no image")).to_be_visible()


class TestDownload:
    def test_study_zip(self, admin_page: Page, console_server: ConsoleServer) -> None:
        stored = console_server.stored[CT_FILE]
        admin_page.goto(f"/console/studies/{stored.study_instance_uid}")

        with admin_page.expect_download() as download_info:
            admin_page.get_by_role("link", name="Download study (zip)").click()
        data = download_info.value.path().read_bytes()

        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        assert names == [
            f"{stored.study_instance_uid}/{stored.series_instance_uid}/"
            f"{stored.sop_instance_uid}.dcm"
        ]


class TestUserRole:
    def test_user_searches_and_views(self, user_page: Page, console_server: ConsoleServer) -> None:
        search_by_name(user_page, "compressedsamples*")
        expect(user_page.locator("#results tbody tr")).to_have_count(2)
        expect(user_page.get_by_text("Management")).to_have_count(0)
        user_page.goto(console_server.stored[CT_FILE].instance_path)

        wait_for_image(user_page, "#viewer-image")


class TestLayout:
    @pytest.mark.parametrize("width", [768, 1024], ids=["tablet", "small-laptop"])
    def test_no_horizontal_scroll(
        self, admin_page: Page, console_server: ConsoleServer, width: int
    ) -> None:
        admin_page.set_viewport_size({"width": width, "height": 900})
        search_by_name(admin_page, "*")
        admin_page.goto(console_server.stored[CT_FILE].instance_path)

        overflow = admin_page.evaluate(
            "document.scrollingElement.scrollWidth - document.scrollingElement.clientWidth"
        )
        assert overflow <= 0

    def test_keyboard_reaches_search(self, page: Page) -> None:
        log_in(page, ADMIN_NAME, ADMIN_PASSWORD)
        page.keyboard.press("Tab")

        expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
