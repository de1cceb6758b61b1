"""Run part of a test inside a network namespace that has only a loopback interface.

Orthanc 1.10 listens on every interface and has no setting to bind to
127.0.0.1. Inside a namespace of our own, every interface is the
namespace's loopback, so its ports are unreachable from anywhere else.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_counter = 0


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns failed: {os.strerror(error)}")


@contextmanager
def isolated_network() -> Iterator[str]:
    """Move the calling thread into a new network namespace; yield its name.

    Processes and threads started inside the block inherit the namespace.
    The thread returns to its original namespace, and the namespace is
    deleted, when the block ends.
    """
    global _counter
    _counter += 1
    name = f"dvtest-{os.getpid()}-{_counter}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    original = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield name
        finally:
            _setns(original)
    finally:
        os.close(original)
        subprocess.run(["ip", "netns", "delete", name], check=False)
