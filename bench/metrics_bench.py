"""Cost of the Prometheus metrics on the store path, measured in one process.

Run it with ``.venv/bin/python -m bench.metrics_bench [options]``. It opens
no port.

Steps:

1. Publish an InstanceStored and a QueryPerformed event ``--events`` times
   on an event bus without subscribers and on one with the metrics
   subscribers (:func:`dicomvault.metrics.subscribe_metrics`). Report the
   best of five loops per event.
2. Build two archives on SQLite in ``--folder`` (default /dev/shm), one
   with the metrics subscribed to its events. Store the dataset of
   pydicom's CT_small.dcm ``--stores`` times in each, alternating between
   them, each time with a new SOP Instance UID. Report the median time of
   ``Archive.store``.

The results go to standard output as Markdown.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
import timeit
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomvault.archive import Archive
from dicomvault.config import load_settings
from dicomvault.events import EventBus, InstanceStored, QueryPerformed
from dicomvault.index.database import open_index_engine
from dicomvault.metrics import ArchiveMetrics, subscribe_metrics
from dicomvault.storage.filesystem import FilesystemStorage

LOOPS = 5
# Stores of each archive left out of the median while SQLite and the page cache warm up.
WARM_UP_STORES = 50


def publish_cost(events: int) -> list[tuple[str, float, float]]:
    """Return (event name, microseconds without metrics, with metrics) per event type."""
    stored = InstanceStored(
        sop_instance_uid="1.2.3.4",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid="1.2.3",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        size=39_100,
        source_ae_title="BENCH",
        replaced=False,
        service="C-STORE",
        duration=0.007,
    )
    query = QueryPerformed("STUDY", ("PatientName",), 3, "BENCH", service="C-FIND", duration=0.004)
    plain = EventBus()
    measured = EventBus()
    subscribe_metrics(ArchiveMetrics(), measured)
    rows = []
    for event in (stored, query):
        costs = []
        for bus in (plain, measured):
            publish = functools.partial(bus.publish, event)
            loops = timeit.repeat(publish, number=events, repeat=LOOPS)
            costs.append(min(loops) / events * 1e6)
        rows.append((type(event).__name__, costs[0], costs[1]))
    return rows


def store_cost(folder: Path, stores: int) -> tuple[float, float]:
    """Return the median milliseconds of Archive.store without and with metrics."""
    path = get_testdata_file("CT_small.dcm")
    if not isinstance(path, str):
        raise FileNotFoundError("pydicom's test file CT_small.dcm is missing")
    ds = pydicom.dcmread(path)
    archives = []
    for label in ("without", "with"):
        data_dir = folder / label
        engine = open_index_engine(f"sqlite:///{data_dir / 'index.sqlite'}")
        settings = load_settings(environ={}, overrides={"storage.data_dir": str(data_dir)})
        archive = Archive(settings, engine, FilesystemStorage(data_dir / "storage"))
        if label == "with":
            subscribe_metrics(ArchiveMetrics(), archive.events)
        archives.append(archive)

    times: list[list[float]] = [[], []]
    for _ in range(stores):
        for index, archive in enumerate(archives):
            ds.SOPInstanceUID = generate_uid()
            buffer = DicomBytesIO()
            buffer.is_little_endian = True
            buffer.is_implicit_VR = False
            write_dataset(buffer, ds)
            started = time.perf_counter()
            archive.store(buffer.getvalue(), ExplicitVRLittleEndian, service="C-STORE")
            times[index].append(time.perf_counter() - started)
    for archive in archives:
        archive.engine.dispose()
    without, with_metrics = (statistics.median(t[WARM_UP_STORES:]) * 1e3 for t in times)
    return without, with_metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Run both measurements and print them as Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="publishes per loop")
    parser.add_argument("--stores", type=int, default=1500, help="stores per archive")
    parser.add_argument(
        "--folder", type=Path, default=Path("/dev/shm"), help="parent of the archives' data"
    )
    args = parser.parse_args(argv)

    print("| event | without metrics, us | with metrics, us |")
    print("|---|---|---|")
    for name, without, with_metrics in publish_cost(args.events):
        print(f"| {name} | {without:.2f} | {with_metrics:.2f} |")

    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        without, with_metrics = store_cost(Path(folder), args.stores)
    print()
    print("| Archive.store, median ms | without metrics | with metrics |")
    print("|---|---|---|")
    print(f"| CT_small.dcm, {args.stores} stores | {without:.3f} | {with_metrics:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
