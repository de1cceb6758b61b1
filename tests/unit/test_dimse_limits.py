"""DIMSE resource limits against a live server: associations, PDU and data set sizes, timeouts.

Each test runs a DimseServer on a loopback port and talks to it as a
broken or greedy peer would: raw sockets for malformed traffic, a
pynetdicom SCU for associations and C-STORE.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicomvault.archive import Archive
from dicomvault.config import load_settings
from dicomvault.dimse.server import DimseServer
from dicomvault.index.database import open_index_engine
from dicomvault.storage.filesystem import FilesystemStorage
from tests.support.corpus import leftover_files
from tests.support.network import LOOPBACK, free_port, wait_until

# Each wait is bounded: a server that ignores a limit fails the test in seconds.
WAIT_SECONDS = 5.0
# A-ASSOCIATE-RJ of PS3.8 Table 9-21: rejected-transient, DICOM UL service-provider
# (presentation related function), local-limit-exceeded.
RESULT_TRANSIENT = 0x02
SOURCE_PROVIDER_PRESENTATION = 0x03
REASON_LOCAL_LIMIT_EXCEEDED = 0x02
# An A-ABORT PDU from the service-provider, reason invalid-PDU-parameter value (PS3.8 9.3.8).
ABORT_INVALID_PARAMETER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., tuple[DimseServer, int]]]:
    """Start a DimseServer with setting overrides such as ``max_associations=2``."""
    servers: list[DimseServer] = []

    def start(**dimse: Any) -> tuple[DimseServer, int]:
        port = free_port()
        overrides = {"storage.data_dir": str(tmp_path), "dimse.port": port}
        overrides.update({f"dimse.{key}": value for key, value in dimse.items()})
        settings = load_settings(environ={}, overrides=overrides)
        engine = open_index_engine(settings.index_url)
        archive = Archive(settings, engine, FilesystemStorage(tmp_path / "storage"))
        server = DimseServer(archive)
        server.start()
        servers.append(server)
        return server, port

    yield start
    for server in servers:
        server.stop(timeout=0)


def scu(ae_title: str = "STORESCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT_SECONDS
    return ae


def open_connections(server: DimseServer) -> int:
    """Count the server's connection threads, associated or not."""
    return sum(len(listener.active_associations) for listener in server._live())


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Read until the server closes ``sock``; return the bytes and the seconds it took."""
    started = time.monotonic()
    sock.settimeout(WAIT_SECONDS)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received, time.monotonic() - started


def ct_dataset(uid: str, pixel_bytes: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.511.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.511.1.1"
    ds.PatientID = "LIMITS"
    ds.Modality = "CT"
    ds.Rows, ds.Columns = 1, pixel_bytes // 2
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(pixel_bytes)
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


class TestAssociationLimits:
    def test_rejects_above_max_associations(
        self,
        start_server: Callable[..., tuple[DimseServer, int]],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        _, port = start_server(max_associations=2)
        holders = [scu(f"HOLDER{number}").associate(LOOPBACK, port) for number in range(2)]
        try:
            assert all(assoc.is_established for assoc in holders)
            with caplog.at_level(logging.WARNING, logger="dicomvault.dimse.server"):
                extra = scu("LATECOMER").associate(LOOPBACK, port)

            assert extra.is_rejected
            rejection = extra.acceptor.primitive
            assert rejection.result == RESULT_TRANSIENT
            assert rejection.result_source == SOURCE_PROVIDER_PRESENTATION
            assert rejection.diagnostic == REASON_LOCAL_LIMIT_EXCEEDED
            messages = [record.getMessage() for record in caplog.records]
            assert any(
                "Association rejected from LATECOMER @ 127.0.0.1:" in message
                and "dimse.max_associations" in message
                for message in messages
            ), messages
        finally:
            for assoc in holders:
                assoc.release()

    def test_rejects_above_limit_per_ae(
        self,
        start_server: Callable[..., tuple[DimseServer, int]],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        _, port = start_server(max_associations=10, max_associations_per_ae=2)
        holders = [scu("CT01").associate(LOOPBACK, port) for _ in range(2)]
        try:
            assert all(assoc.is_established for assoc in holders)
            with caplog.at_level(logging.WARNING, logger="dicomvault.dimse.server"):
                extra = scu("CT01").associate(LOOPBACK, port)
            other = scu("MR01").associate(LOOPBACK, port)

            assert extra.is_rejected
            rejection = extra.acceptor.primitive
            assert rejection.result == RESULT_TRANSIENT
            assert rejection.result_source == SOURCE_PROVIDER_PRESENTATION
            assert rejection.diagnostic == REASON_LOCAL_LIMIT_EXCEEDED
            assert other.is_established
            other.release()
            messages = [record.getMessage() for record in caplog.records]
            assert any(
                "Association rejected from CT01 @ 127.0.0.1:" in message
                and "2 associations of CT01 are open" in message
                and "dimse.max_associations_per_ae" in message
                for message in messages
            ), messages
        finally:
            for assoc in holders:
                assoc.release()

    def test_released_association_frees_slot_per_ae(
        self, start_server: Callable[..., tuple[DimseServer, int]]
    ) -> None:
        server, port = start_server(max_associations_per_ae=1)
        first = scu("CT01").associate(LOOPBACK, port)
        assert first.is_established
        first.release()
        assert wait_until(lambda: server.associations_per_ae.open_associations("CT01") == 0, 5)

        second = scu("CT01").associate(LOOPBACK, port)

        assert second.is_established
        second.release()


class TestTimeouts:
    def test_silent_connection_is_closed(
        self, start_server: Callable[..., tuple[DimseServer, int]]
    ) -> None:
        server, port = start_server(acse_timeout=1)

        with socket.create_connection((LOOPBACK, port)) as sock:
            received, seconds = read_until_closed(sock)

        assert received == b""
        assert seconds < 3
        assert wait_until(lambda: open_connections(server) == 0, WAIT_SECONDS)

    def test_stall_inside_pdu_is_dropped(
        self, start_server: Callable[..., tuple[DimseServer, int]]
    ) -> None:
        server, port = start_server(acse_timeout=1, network_timeout=1)

        with socket.create_connection((LOOPBACK, port)) as sock:
            # An A-ASSOCIATE-RQ header announcing 200 bytes, then 10 of them.
            sock.sendall(b"\x01\x00" + struct.pack(">L", 200) + b"\x00\x01" + bytes(8))
            received, seconds = read_until_closed(sock)

        assert received == b""
        assert seconds < 3
        assert wait_until(lambda: open_connections(server) == 0, WAIT_SECONDS)

    def test_trickling_pdu_is_dropped(
        self, start_server: Callable[..., tuple[DimseServer, int]]
    ) -> None:
        server, port = start_server(acse_timeout=1, network_timeout=1)
        closed = threading.Event()

        with socket.create_connection((LOOPBACK, port)) as sock:
            sock.sendall(b"\x01\x00" + struct.pack(">L", 200))
            started = time.monotonic()
            # One byte every 0.3 s: never idle for network_timeout, but too slow for one PDU.
            while not closed.is_set() and time.monotonic() - started < WAIT_SECONDS:
                try:
                    sock.sendall(b"\x00")
                except OSError:
                    closed.set()
                    break
                time.sleep(0.3)
            seconds = time.monotonic() - started

        assert closed.is_set()
        assert seconds < 4
        assert wait_until(lambda: open_connections(server) == 0, WAIT_SECONDS)


class TestPduLength:
    def test_huge_announced_length_is_aborted(
        self, start_server: Callable[..., tuple[DimseServer, int]]
    ) -> None:
        # A long ACSE timeout: the abort must not wait for it.
        _, port = start_server(acse_timeout=30)

        with socket.create_connection((LOOPBACK, port)) as sock:
            sock.sendall(b"\x01\x00" + struct.pack(">L", 0xFFFFFFF0) + bytes(64))
            received, seconds = read_until_closed(sock)

        assert received == ABORT_INVALID_PARAMETER
        assert seconds < 2

    def test_p_data_longer_than_negotiated_is_aborted(
        self, start_server: Callable[..., tuple[DimseServer, int]]
    ) -> None:
        _, port = start_server(max_pdu_size=16384)
        assoc = scu().associate(LOOPBACK, port)
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == 16384

        raw = assoc.dul.socket.socket
        try:
            # A P-DATA-TF header one byte longer than the archive's Maximum Length, and its start.
            raw.sendall(b"\x04\x00" + struct.pack(">L", 16385) + bytes(100))

            assert wait_until(lambda: assoc.is_aborted, WAIT_SECONDS)
        finally:
            assoc.join(WAIT_SECONDS)
            raw.close()


class TestDatasetSize:
    def test_too_large_dataset_fails_and_stores_nothing(
        self, start_server: Callable[..., tuple[DimseServer, int]], tmp_path: Path
    ) -> None:
        _, port = start_server(max_dataset_size=20_000, max_pdu_size=16384)
        assoc = scu().associate(LOOPBACK, port)
        assert assoc.is_established
        try:
            too_large = ct_dataset("1.2.826.0.1.3680043.10.511.1.1.1", 60_000)
            small = ct_dataset("1.2.826.0.1.3680043.10.511.1.1.2", 2_000)

            rsp = assoc.send_c_store(too_large)
            files_after_failure = leftover_files(tmp_path)
            small_rsp = assoc.send_c_store(small)
        finally:
            assoc.release()

        assert rsp.Status == 0xA700
        assert rsp.ErrorComment == "Data set exceeds dimse.max_dataset_size (20000 bytes)"
        assert files_after_failure == []
        # The association goes on: the next, smaller data set is stored.
        assert small_rsp.Status == 0x0000
        assert len(leftover_files(tmp_path)) == 1
