"""Tests of the DICOMweb application wiring: the authentication hook and CORS.

Each test serves the application with uvicorn on a loopback port.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi import FastAPI, Request

from dicomvault.archive import Archive
from dicomvault.web.app import create_app
from dicomvault.web.auth import ANONYMOUS, Authenticator, Principal
from dicomvault.web.dicomweb.resources import DICOMWEB_PREFIX
from dicomvault.web.server import HttpServer
from tests.support.network import LOOPBACK, free_port

TIMEOUT_SECONDS = 30


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Run on SQLite only, because these tests exercise HTTP routes and pages.

    The index queries behind them run on both back-ends in test_index,
    test_users and test_web_search.
    """
    return "sqlite"


@contextmanager
def serve(
    archive: Archive, authenticator: Authenticator | None = None
) -> Iterator[tuple[httpx.Client, FastAPI]]:
    """Serve the application on a free loopback port; yield a client and the application."""
    app = create_app(None, archive, authenticator)  # type: ignore[arg-type]
    server = HttpServer(app, LOOPBACK, free_port())
    server.start()
    try:
        with httpx.Client(
            base_url=f"http://{LOOPBACK}:{server.port}", timeout=TIMEOUT_SECONDS
        ) as client:
            yield client, app
    finally:
        server.stop()


class RejectAll:
    """An authenticator that rejects every request."""

    def authenticate(self, request: Request) -> Principal | None:
        return None


class RecordCallers:
    """An authenticator that lets requests through and records their paths."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def authenticate(self, request: Request) -> Principal | None:
        self.paths.append(request.url.path)
        return ANONYMOUS


def dicomweb_paths(app: FastAPI) -> list[str]:
    """Return a concrete path for every DICOMweb and WADO-URI GET route."""
    paths = []
    for path, operations in app.openapi()["paths"].items():
        if "get" not in operations:
            continue
        if path.startswith(DICOMWEB_PREFIX) or path == "/wado":
            paths.append(
                path.replace("{study}", "1.2")
                .replace("{series}", "1.3")
                .replace("{instance}", "1.4")
                .replace("{frame_list}", "1")
                .replace("{frame}", "1")
                .replace("{tag}", "7FE00010")
            )
    return paths


def test_every_route_requires_authentication(archive: Archive) -> None:
    with serve(archive, RejectAll()) as (client, app):
        paths = dicomweb_paths(app)
        assert len(paths) >= 20
        for path in paths:
            response = client.get(path)
            assert response.status_code == 401, path
            assert response.json()["detail"].startswith("Authentication required: send an API")
            assert response.headers["www-authenticate"] == "Bearer"


def test_authenticator_sees_every_request(archive: Archive) -> None:
    recorder = RecordCallers()
    with serve(archive, recorder) as (client, app):
        paths = dicomweb_paths(app)
        assert len(paths) >= 20
        for path in paths:
            assert client.get(path).status_code != 401, path
    assert recorder.paths == [path.split("?")[0] for path in paths]


def test_admin_api_not_behind_hook(archive: Archive) -> None:
    with serve(archive, RejectAll()) as (client, _):
        assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    ("origins", "allowed"),
    [([], None), (["https://viewer.example.org"], "https://viewer.example.org"), (["*"], "*")],
    ids=["off", "one-origin", "any"],
)
def test_cors_setting(
    make_archive: Callable[..., Archive], origins: list[str], allowed: str | None
) -> None:
    archive = make_archive(http__cors_allow_origins=origins)
    with serve(archive) as (client, _):
        response = client.get(
            f"{DICOMWEB_PREFIX}/studies", headers={"Origin": "https://viewer.example.org"}
        )
    assert response.status_code == 204
    assert response.headers.get("access-control-allow-origin") == allowed


def test_public_url_setting(make_archive: Callable[..., Archive]) -> None:
    archive = make_archive(http__public_url="https://pacs.example.org/base/")
    assert dataclasses.asdict(archive.settings.http)["public_url"] == (
        "https://pacs.example.org/base"
    )
