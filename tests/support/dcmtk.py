"""Run the DCMTK command line SCUs (echoscu, storescu, findscu) against a server.

Each tool runs with `-d` because DCMTK 3.6.7 exits with code 0 even when the
peer returns a failure status. The status and the Error Comment are read from
the DIMSE message dumps that debug mode prints. The parsers here rely on the
line formats of DCMTK 3.6.7 as packaged by Debian 12.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom.status import code_to_category

from tests.support.network import LOOPBACK
from tests.support.process import ToolRun, run_tool

# Timeouts passed to the tools themselves, in seconds: TCP connect, ACSE, DIMSE.
CONNECT_TIMEOUT = "10"
ACSE_TIMEOUT = "30"
DIMSE_TIMEOUT = "60"

_STATUS_RE = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")
_ERROR_COMMENT_RE = re.compile(r"\(0000,0902\) LO \[(.*)\]\s+#")
_SENDING_FILE_RE = re.compile(r"^I: Sending file: (.+)$")
_STORE_FAILED_RE = re.compile(r"^E: Store Failed, file: (.+):$")
_IGNORED_FILE_RE = re.compile(
    r"^W: missing SOP class \(or instance\) in file: (.+), ignoring file$"
)


def format_status(status: int | None) -> str:
    """Format a status as "0xA900", or "none" when no response came."""
    return "none" if status is None else f"0x{status:04X}"


def is_failure(status: int | None) -> bool:
    """Return True if `status` is a DIMSE failure status (PS3.7 Annex C)."""
    return status is not None and code_to_category(status) == "Failure"


def _network_options(calling_ae: str, called_ae: str) -> list[str]:
    return [
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        "-to",
        CONNECT_TIMEOUT,
        "-ta",
        ACSE_TIMEOUT,
        "-td",
        DIMSE_TIMEOUT,
    ]


def echoscu(
    port: int, called_ae: str, calling_ae: str = "ECHOSCU", options: Sequence[str] = ()
) -> ToolRun:
    """Send one C-ECHO to 127.0.0.1:`port`. Exit code 0 means success.

    `options` go before the address, such as the TLS options of :func:`tls_options`.
    """
    return run_tool(
        ["echoscu", "-v", *_network_options(calling_ae, called_ae), *options, LOOPBACK, str(port)]
    )


def tls_options(key_file: Path | None, cert_file: Path | None, ca_file: Path) -> list[str]:
    """Return DCMTK's options for TLS: with a client certificate, or anonymous without one.

    The server's certificate must chain to `ca_file` (DCMTK's default, --require-peer-cert).
    """
    if key_file is None or cert_file is None:
        return ["+tla", "+cf", str(ca_file)]
    return ["+tls", str(key_file), str(cert_file), "+cf", str(ca_file)]


@dataclasses.dataclass
class StoreResult:
    """What storescu did with one input file.

    Attributes
    ----------
    sent : bool
        True if storescu sent a C-STORE request and got a response.
    status : int or None
        The response status, or None when nothing was sent or no response came.
    error_comment : str or None
        The Error Comment (0000,0902) of the response, if any.
    messages : list of str
        storescu's error and warning lines about this file.
    """

    path: str
    sent: bool = False
    status: int | None = None
    error_comment: str | None = None
    messages: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class StoreRun:
    """One storescu run and the outcome for each file, keyed by the path given."""

    run: ToolRun
    results: dict[str, StoreResult]


def storescu(
    port: int,
    paths: Sequence[Path],
    called_ae: str,
    calling_ae: str = "STORESCU",
    options: Sequence[str] = (),
) -> StoreRun:
    """Send files with storescu, one association, and parse the outcome per file.

    storescu proposes only the presentation contexts the files need (`-R`) and
    goes on after a failed store (`--no-halt`). Compressed files need the
    matching proposal option in `options`, such as `-xr` for RLE Lossless,
    because storescu 3.6.7 otherwise proposes only uncompressed transfer syntaxes.

    A directory in `paths` needs `+sd` in `options` (and `+r` to recurse). Its
    files then appear in the results under the paths storescu prints, which
    are the directory path joined with each file's relative path.
    """
    names = [str(path) for path in paths]
    args = [
        "storescu",
        "-d",
        "--no-halt",
        "-R",
        *_network_options(calling_ae, called_ae),
        *options,
        LOOPBACK,
        str(port),
        *names,
    ]
    run = run_tool(args)
    results = parse_storescu_output(run.output)
    for name in names:
        if name not in results and not Path(name).is_dir():
            results[name] = StoreResult(
                name, messages=["storescu output does not mention this file"]
            )
    return StoreRun(run, results)


def parse_storescu_output(output: str) -> dict[str, StoreResult]:
    """Parse `storescu -d` output into one :class:`StoreResult` per file."""
    results: dict[str, StoreResult] = {}
    current: StoreResult | None = None
    # Errors and warnings seen since the last file marker. storescu prints
    # why it cannot read a file before the line saying it ignores the file.
    pending_messages: list[str] = []

    for line in output.splitlines():
        if match := _IGNORED_FILE_RE.match(line):
            path = match.group(1)
            results[path] = StoreResult(path, messages=[*pending_messages, line])
            pending_messages = []
        elif match := _SENDING_FILE_RE.match(line):
            current = StoreResult(match.group(1), sent=True)
            results[current.path] = current
            pending_messages = []
        elif match := _STORE_FAILED_RE.match(line):
            current = results.setdefault(match.group(1), StoreResult(match.group(1)))
            current.sent = False
            current.messages.append(line)
        elif current is not None and (match := _STATUS_RE.search(line)):
            current.status = int(match.group(1), 16)
        elif current is not None and (match := _ERROR_COMMENT_RE.search(line)):
            current.error_comment = match.group(1)
        elif line.startswith(("E: ", "W: ")):
            if current is None:
                pending_messages.append(line)
            else:
                current.messages.append(line)
    return results


@dataclasses.dataclass
class FindRun:
    """One findscu run: the final status and the response identifiers."""

    run: ToolRun
    status: int | None
    error_comment: str | None
    responses: list[Dataset]

    def describe(self) -> str:
        """The command, exit code and output, for assertion messages."""
        return self.run.describe()


FIND_MODELS = {"patient": "-P", "study": "-S"}


def findscu(
    port: int,
    keys: Mapping[str, str | bytes],
    called_ae: str,
    model: str = "study",
    query_file: Path | None = None,
    calling_ae: str = "FINDSCU",
    options: Sequence[str] = (),
) -> FindRun:
    """Send one C-FIND with findscu and read the responses back with pydicom.

    Parameters
    ----------
    keys : Mapping
        Matching and return keys by DICOM keyword or tag ("gggg,eeee"). A key
        with an empty value requests the attribute's value (universal matching).
        The request needs a QueryRetrieveLevel key, here or in `query_file`.
    model : str
        "patient" for Patient Root, "study" for Study Root Query/Retrieve
        Information Model - FIND.
    query_file : Path, optional
        A DICOM file with the identifier; `keys` then override its elements.
    options : Sequence of str
        More findscu options, such as the TLS options of :func:`tls_options`.
    """
    key_options: list[str | bytes] = []
    for keyword, value in keys.items():
        if value in ("", b""):
            key_options += ["-k", keyword]
        elif isinstance(value, bytes):
            key_options += ["-k", keyword.encode("ascii") + b"=" + value]
        else:
            key_options += ["-k", f"{keyword}={value}"]

    with tempfile.TemporaryDirectory(prefix="findscu-") as out_dir:
        args: list[str | bytes] = [
            "findscu",
            "-d",
            FIND_MODELS[model],
            *_network_options(calling_ae, called_ae),
            "-X",
            "-od",
            out_dir,
            *key_options,
            *options,
            LOOPBACK,
            str(port),
        ]
        if query_file is not None:
            args.append(str(query_file))
        run = run_tool(args)
        responses: list[Dataset] = [
            pydicom.dcmread(path) for path in sorted(Path(out_dir).glob("rsp*.dcm"))
        ]

    statuses = _STATUS_RE.findall(run.output)
    status = int(statuses[-1], 16) if statuses else None
    comment = _ERROR_COMMENT_RE.search(run.output)
    return FindRun(run, status, comment.group(1) if comment else None, responses)
