"""Run the node under test and the services it shares on separate CPUs.

In a deployment that shares PostgreSQL and a bucket, neither runs on the
node: they are other machines or managed services. On one machine, they
take CPU time from the node unless each side gets CPUs of its own. Here
the benchmark process, and so every dicomvault server and DICOM client it
starts, runs on the node's CPUs, and PostgreSQL and moto on the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

LOGGER = logging.getLogger(__name__)

POSTGRES_COMMAND = "postgres"


@contextlib.contextmanager
def node_and_services(node_cpus: set[int]) -> Iterator[set[int]]:
    """Pin this process to ``node_cpus`` and PostgreSQL to the other CPUs; yield those others.

    Processes this one starts inherit its CPUs, and PostgreSQL's backends
    those of the postmaster. On exit every CPU is allowed again.

    Raises
    ------
    ValueError
        If ``node_cpus`` is empty, or leaves no CPU for the services.
    """
    every_cpu = os.sched_getaffinity(0)
    services = every_cpu - node_cpus
    if not node_cpus or not node_cpus <= every_cpu or not services:
        raise ValueError(
            f"--node-cpus must name some of the CPUs {sorted(every_cpu)} and leave at least one"
        )
    postgres = postgres_pids()
    for pid in postgres:
        pin(pid, services)
    os.sched_setaffinity(0, node_cpus)
    LOGGER.info(
        "node on CPUs %s; PostgreSQL (%d processes) and moto on CPUs %s",
        sorted(node_cpus),
        len(postgres),
        sorted(services),
    )
    try:
        yield services
    finally:
        os.sched_setaffinity(0, every_cpu)
        for pid in postgres_pids():
            pin(pid, every_cpu)


def pin(pid: int, cpus: set[int]) -> None:
    """Let process ``pid`` run on ``cpus`` only; a process that has ended is skipped."""
    with contextlib.suppress(ProcessLookupError):
        os.sched_setaffinity(pid, cpus)


def postgres_pids() -> list[int]:
    """Return the ids of the running PostgreSQL server processes."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == POSTGRES_COMMAND:
                    pids.append(int(entry.name))
    return pids
