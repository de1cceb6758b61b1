"""Benchmark runner: dicomvault beside DCMTK storescp and Orthanc, one server at a time on loopback.

Start it with ``make bench`` or ``bash bench/run.sh [options]`` (root), which
runs it inside a network namespace that has only a loopback interface.

Sections, each selectable with ``--only``:

- ingest: C-STORE instances per second and peak memory, one and four
  associations, with and without TCP_NODELAY in storescu's environment;
- find: C-FIND latency at STUDY and IMAGE level on an index of 10,000
  instances (100,000 with ``--large``);
- move: C-MOVE of one study to storescp.

The tables go to standard output as Markdown; progress goes to standard error.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.corpus import COMPRESSIONS, Corpus, CorpusSpec, write_corpus
from bench.find import find_tables, run_find
from bench.ingest import ingest_tables, run_ingest
from bench.move import move_tables, run_move
from bench.report import Table, machine_lines, run_and_report

LOGGER = logging.getLogger("bench.run")

SECTIONS = ("ingest", "find", "move")
LARGE_FIND_INSTANCES = 100_000
REQUIRED_TOOLS = ("storescu", "storescp", "movescu", "Orthanc")
# The options that set a field of Scale, each at least 1.
SCALE_OPTIONS = (
    "runs",
    "instances",
    "nagle_instances",
    "find_instances",
    "find_repeats",
    "move_instances",
)


@dataclasses.dataclass(frozen=True)
class Scale:
    """Instance counts and repetitions of one benchmark run."""

    runs: int = 3
    instances: int = 2000
    nagle_instances: int = 200
    find_instances: int = 10_000
    find_repeats: int = 20
    move_instances: int = 500


TINY = Scale(
    runs=1,
    instances=40,
    nagle_instances=10,
    find_instances=60,
    find_repeats=3,
    move_instances=20,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the runner's command line."""
    default = Scale()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, from {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--runs", type=int, help=f"runs per measurement (default {default.runs})")
    parser.add_argument(
        "--instances",
        type=int,
        help=f"instances of the ingest corpus (default {default.instances})",
    )
    parser.add_argument(
        "--nagle-instances",
        type=int,
        help="instances sent to storescp and Orthanc without TCP_NODELAY, where each "
        f"C-STORE stalls about 40 ms (default {default.nagle_instances})",
    )
    parser.add_argument(
        "--find-instances",
        type=int,
        help=f"instances in the C-FIND index (default {default.find_instances})",
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help=f"build the C-FIND index of {LARGE_FIND_INSTANCES} instances",
    )
    parser.add_argument(
        "--find-repeats",
        type=int,
        help=f"timed repeats of each C-FIND query (default {default.find_repeats})",
    )
    parser.add_argument(
        "--move-instances",
        type=int,
        help=f"instances of the C-MOVE study (default {default.move_instances})",
    )
    parser.add_argument(
        "--move-modality",
        choices=("CT", "MR"),
        default="CT",
        help="C-MOVE study images: CT 512 x 512 (512 KiB) or MR 256 x 256 (128 KiB)",
    )
    parser.add_argument(
        "--compression",
        choices=sorted(COMPRESSIONS),
        help="encode the ingest corpus losslessly (default: uncompressed)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tens of instances and one run: a smoke test"
    )
    parser.add_argument("--seed", type=int, default=1, help="corpus seed")
    parser.add_argument(
        "--workdir", type=Path, help="folder for corpora and servers (default: a new temporary one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder at the end")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)

    args.sections = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown or not args.sections:
        parser.error(f"--only takes sections from {', '.join(SECTIONS)}, got {args.only!r}")
    for name in SCALE_OPTIONS:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args


def scale_from(args: argparse.Namespace) -> Scale:
    """Combine the defaults, --tiny, --large and the explicit counts into one Scale."""
    scale = TINY if args.tiny else Scale()
    if args.large:
        scale = dataclasses.replace(scale, find_instances=LARGE_FIND_INSTANCES)
    explicit = {
        name: getattr(args, name) for name in SCALE_OPTIONS if getattr(args, name) is not None
    }
    return dataclasses.replace(scale, **explicit)


def ingest_spec(scale: Scale, args: argparse.Namespace) -> CorpusSpec:
    """Return the ingest corpus: every modality at full size, 25 instances per series."""
    return CorpusSpec(
        patients=scale.instances,
        max_instances=scale.instances,
        seed=args.seed,
        compression=args.compression,
    )


def find_spec(scale: Scale, args: argparse.Namespace) -> CorpusSpec:
    """Return the C-FIND corpus: the ingest layout with 16 x 16 images."""
    return CorpusSpec(
        patients=scale.find_instances,
        max_instances=scale.find_instances,
        seed=args.seed,
        small_pixels=True,
    )


def move_spec(scale: Scale, args: argparse.Namespace) -> CorpusSpec:
    """Return the C-MOVE corpus: one study with one series."""
    return CorpusSpec(
        patients=1,
        studies_per_patient=1,
        series_per_study=1,
        instances_per_series=scale.move_instances,
        seed=args.seed,
        modalities=(args.move_modality,),
    )


def generate(spec: CorpusSpec, folder: Path) -> Corpus:
    """Write a corpus and log how long it took."""
    started = time.perf_counter()
    corpus = write_corpus(spec, folder)
    LOGGER.info(
        "corpus %s: %d instances, mean %.0f kB, written in %.0f s",
        folder.name,
        corpus.instances,
        corpus.mean_instance_kb,
        time.perf_counter() - started,
    )
    return corpus


def run_sections(work: Path, scale: Scale, args: argparse.Namespace) -> list[Table]:
    """Run the selected sections in order and return their tables."""
    tables: list[Table] = []
    if "ingest" in args.sections:
        LOGGER.info("ingest section")
        corpus = generate(ingest_spec(scale, args), work / "corpus-ingest")
        results = run_ingest(work / "ingest", corpus, scale.runs, scale.nagle_instances)
        tables += ingest_tables(results, corpus, scale.runs)
        shutil.rmtree(corpus.folder, ignore_errors=True)
    if "find" in args.sections:
        LOGGER.info("find section")
        corpus = generate(find_spec(scale, args), work / "corpus-find")
        find_results = run_find(work / "find", corpus, scale.find_repeats)
        tables += find_tables(find_results, corpus, scale.find_repeats)
        shutil.rmtree(corpus.folder, ignore_errors=True)
    if "move" in args.sections:
        LOGGER.info("move section")
        corpus = generate(move_spec(scale, args), work / "corpus-move")
        move_results = run_move(work / "move", corpus, scale.runs)
        tables += move_tables(move_results, corpus, scale.runs)
    return tables


def describe_machine() -> list[str]:
    """Return lines naming the date, the machine and the versions of the servers."""
    return [
        *machine_lines(),
        f"Servers: dicomvault {importlib.metadata.version('dicomvault')} ({_git_commit()}), "
        f"{_first_line(['Orthanc', '--version'])}, DCMTK {_dcmtk_version()}",
    ]


def _first_line(command: list[str]) -> str:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    lines = (completed.stdout or completed.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _dcmtk_version() -> str:
    # "$dcmtk: storescu v3.6.7 2022-04-22 $"
    words = _first_line(["storescu", "--version"]).split()
    return next((word.lstrip("v") for word in words if word.startswith("v")), "unknown")


def _git_commit() -> str:
    completed = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return completed.stdout.strip() or "unknown commit"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0 on success, 1 when a measurement failed, 2 on bad usage."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s", stream=sys.stderr)
    # pynetdicom logs every association and DIMSE message at INFO.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        print(
            f"bench: not found on PATH: {', '.join(missing)}; run tests/services.sh",
            file=sys.stderr,
        )
        return 2

    scale = scale_from(args)
    return run_and_report(
        lambda work: run_sections(work, scale, args),
        describe_machine(),
        args.workdir,
        args.keep,
        args.markdown,
        prefix="dicomvault-bench-",
    )


if __name__ == "__main__":
    sys.exit(main())
