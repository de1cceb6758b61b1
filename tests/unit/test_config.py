"""Unit tests for settings: defaults, TOML file, environment variables and options."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomvault.config import (
    SETTINGS,
    ConfigError,
    Settings,
    apply_saved_settings,
    describe_settings,
    load_settings,
    mask_url_password,
)
from dicomvault.permissions import Permission

KNOWN_SETTINGS = ", ".join(sorted(definition.name for definition in SETTINGS))
AE_TITLE_FORM = "must be 1 to 16 printable ASCII characters without backslash"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dicomvault.toml"
    path.write_text(text, encoding="utf-8")
    return path


def described(settings: Settings) -> dict[str, tuple[str, str]]:
    """Return describe_settings rows as name -> (displayed value, source)."""
    return {name: (value, source) for name, value, source in describe_settings(settings)}


class TestDefaults:
    def test_ae_title(self) -> None:
        settings = load_settings(environ={})
        assert settings.dimse.ae_title == "DICOMVAULT"

    def test_listen_address(self) -> None:
        settings = load_settings(environ={})
        assert settings.dimse.host == "127.0.0.1"
        assert settings.dimse.port == 11112

    def test_data_dir(self) -> None:
        settings = load_settings(environ={})
        assert settings.storage.data_dir == "./data"
        assert settings.data_dir == (Path.cwd() / "data").resolve()

    def test_sqlite_url_under_data_dir(self, tmp_path: Path) -> None:
        settings = load_settings(environ={}, overrides={"storage.data_dir": str(tmp_path)})
        assert settings.index.url == ""
        assert settings.index_url == f"sqlite:///{tmp_path.resolve() / 'index.sqlite'}"

    def test_no_calling_ae_title_restriction(self) -> None:
        settings = load_settings(environ={})
        assert settings.dimse.allowed_calling_ae_titles == []

    def test_duplicate_policy_replace(self) -> None:
        settings = load_settings(environ={})
        assert settings.storage.duplicate_policy == "replace"

    def test_sources_are_default(self) -> None:
        settings = load_settings(environ={})
        assert set(settings.sources.values()) == {"default"}


class TestConfigFile:
    def test_values_read(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path,
            '[dimse]\nae_title = "ARCHIVE1"\nport = 11113\n'
            'allowed_calling_ae_titles = ["CT01", "MR02"]\n'
            '[storage]\nduplicate_policy = "reject"\n'
            "[query]\nperson_name_case_insensitive = false\n",
        )
        settings = load_settings(path, environ={})
        assert settings.dimse.ae_title == "ARCHIVE1"
        assert settings.dimse.port == 11113
        assert settings.dimse.allowed_calling_ae_titles == ["CT01", "MR02"]
        assert settings.storage.duplicate_policy == "reject"
        assert settings.query.person_name_case_insensitive is False

    def test_source_names_file(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "[dimse]\nport = 11113\n")
        settings = load_settings(path, environ={})
        assert settings.sources["dimse.port"] == f"file {path}"
        assert settings.sources["dimse.host"] == "default"

    def test_path_from_environment(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "[dimse]\nport = 11113\n")
        settings = load_settings(environ={"DICOMVAULT_CONFIG": str(path)})
        assert settings.dimse.port == 11113

    def test_index_url_used_as_given(self, tmp_path: Path) -> None:
        url = "postgresql://dicomvault:secret@127.0.0.1/dicomvault"
        path = write_config(tmp_path, f'[index]\nurl = "{url}"\n')
        settings = load_settings(path, environ={})
        assert settings.index_url == url


class TestPrecedence:
    def test_environment_wins_over_file(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "[dimse]\nport = 11113\n")
        settings = load_settings(path, environ={"DICOMVAULT_DIMSE_PORT": "11114"})
        assert settings.dimse.port == 11114
        assert settings.sources["dimse.port"] == "DICOMVAULT_DIMSE_PORT"

    def test_options_win_over_environment(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "[dimse]\nport = 11113\n")
        settings = load_settings(
            path,
            environ={"DICOMVAULT_DIMSE_PORT": "11114"},
            overrides={"dimse.port": 11115},
        )
        assert settings.dimse.port == 11115
        assert settings.sources["dimse.port"] == "command line"

    def test_none_option_ignored(self) -> None:
        settings = load_settings(
            environ={"DICOMVAULT_DIMSE_PORT": "11114"}, overrides={"dimse.port": None}
        )
        assert settings.dimse.port == 11114

    @pytest.mark.parametrize(
        ("variable", "value", "section", "key", "expected"),
        [
            pytest.param(
                "DICOMVAULT_DIMSE_AE_TITLE", "STORE1", "dimse", "ae_title", "STORE1", id="ae_title"
            ),
            pytest.param("DICOMVAULT_DIMSE_HOST", "::1", "dimse", "host", "::1", id="host"),
            pytest.param(
                "DICOMVAULT_DIMSE_ACSE_TIMEOUT", "2.5", "dimse", "acse_timeout", 2.5, id="float"
            ),
            pytest.param(
                "DICOMVAULT_QUERY_PERSON_NAME_CASE_INSENSITIVE",
                "no",
                "query",
                "person_name_case_insensitive",
                False,
                id="bool",
            ),
            pytest.param(
                "DICOMVAULT_LOGGING_LEVEL", "debug", "logging", "level", "DEBUG", id="log_level"
            ),
            pytest.param(
                "DICOMVAULT_STORAGE_DUPLICATE_POLICY",
                "Reject",
                "storage",
                "duplicate_policy",
                "reject",
                id="choice",
            ),
        ],
    )
    def test_environment_value_parsed(
        self, variable: str, value: str, section: str, key: str, expected: object
    ) -> None:
        settings = load_settings(environ={variable: value})
        assert getattr(getattr(settings, section), key) == expected

    def test_unrelated_environment_ignored(self) -> None:
        settings = load_settings(environ={"PATH": "/bin", "DICOM_PORT": "104"})
        assert set(settings.sources.values()) == {"default"}


class TestInvalidValues:
    def test_port_from_environment(self) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ={"DICOMVAULT_DIMSE_PORT": "abc"})
        assert str(excinfo.value) == (
            "Invalid setting DICOMVAULT_DIMSE_PORT: must be an integer from 0 to 65535, got 'abc'"
        )

    def test_port_out_of_range_in_file(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "[dimse]\nport = 70000\n")
        with pytest.raises(ConfigError) as excinfo:
            load_settings(path, environ={})
        assert str(excinfo.value) == (
            f"Invalid setting 'dimse.port' (file {path}): "
            "must be an integer from 0 to 65535, got 70000"
        )

    def test_port_from_options(self) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ={}, overrides={"dimse.port": 65536})
        assert str(excinfo.value) == (
            "Invalid setting 'dimse.port' (command line): "
            "must be an integer from 0 to 65535, got 65536"
        )

    def test_unknown_key_in_file(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[dimse]\ncolour = "blue"\n')
        with pytest.raises(ConfigError) as excinfo:
            load_settings(path, environ={})
        assert str(excinfo.value) == (
            f"Unknown setting 'dimse.colour' in file {path}; known settings: {KNOWN_SETTINGS}"
        )

    def test_unknown_option(self) -> None:
        with pytest.raises(ConfigError, match=r"^Unknown setting 'dimse\.colour' in command line;"):
            load_settings(environ={}, overrides={"dimse.colour": "blue"})

    def test_bad_toml(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "[dimse\nport = 11113\n")
        with pytest.raises(ConfigError) as excinfo:
            load_settings(path, environ={})
        assert str(excinfo.value) == (
            f"Configuration file {path} is not valid TOML: "
            "Expected ']' at the end of a table declaration (at line 1, column 7)"
        )

    def test_file_not_utf8(self, tmp_path: Path) -> None:
        # TOML files must be UTF-8, so a Latin-1 byte is an error that ConfigError should name.
        path = tmp_path / "dicomvault.toml"
        path.write_bytes(b"# Caf\xe9 archive\n[dimse]\nport = 11113\n")
        with pytest.raises(ConfigError, match=f"^Configuration file {path} "):
            load_settings(path, environ={})

    def test_missing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.toml"
        with pytest.raises(ConfigError) as excinfo:
            load_settings(path, environ={})
        assert str(excinfo.value) == f"Configuration file {path} not found"

    def test_missing_file_from_environment(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.toml"
        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ={"DICOMVAULT_CONFIG": str(path)})
        assert str(excinfo.value) == f"Configuration file {path} not found"

    def test_unreadable_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(tmp_path, environ={})
        assert str(excinfo.value) == f"Cannot read configuration file {tmp_path}: Is a directory"

    def test_value_outside_table(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "port = 11113\n")
        with pytest.raises(ConfigError) as excinfo:
            load_settings(path, environ={})
        assert str(excinfo.value) == (
            f"Configuration file {path}: 'port' must be a table such as [port], got a value"
        )

    @pytest.mark.parametrize(
        ("toml", "message"),
        [
            pytest.param(
                'port = "abc"',
                "'dimse.port' (file {path}): must be an integer from 0 to 65535, got 'abc'",
                id="port_string",
            ),
            pytest.param(
                "port = true",
                "'dimse.port' (file {path}): must be an integer from 0 to 65535, got True",
                id="port_bool",
            ),
            pytest.param(
                "acse_timeout = 0.5",
                "'dimse.acse_timeout' (file {path}): must be a number from 1 to 3600, got 0.5",
                id="timeout_too_short",
            ),
            pytest.param(
                "acse_timeout = true",
                "'dimse.acse_timeout' (file {path}): must be a number from 1 to 3600, got True",
                id="timeout_bool",
            ),
            pytest.param(
                'host = "archive.example"',
                "'dimse.host' (file {path}): "
                "must be an IP address such as 127.0.0.1, got 'archive.example'",
                id="host_name",
            ),
            pytest.param(
                "allowed_calling_ae_titles = 5",
                "'dimse.allowed_calling_ae_titles' (file {path}): "
                "must be a list of AE titles, got 5",
                id="ae_title_list_number",
            ),
        ],
    )
    def test_dimse_value(self, tmp_path: Path, toml: str, message: str) -> None:
        path = write_config(tmp_path, f"[dimse]\n{toml}\n")
        with pytest.raises(ConfigError) as excinfo:
            load_settings(path, environ={})
        assert str(excinfo.value) == "Invalid setting " + message.format(path=path)

    @pytest.mark.parametrize(
        ("variable", "value", "reason"),
        [
            pytest.param(
                "DICOMVAULT_STORAGE_DUPLICATE_POLICY",
                "ignore",
                "must be one of replace, reject, got 'ignore'",
                id="duplicate_policy",
            ),
            pytest.param(
                "DICOMVAULT_QUERY_PERSON_NAME_CASE_INSENSITIVE",
                "maybe",
                "must be true or false, got 'maybe'",
                id="bool",
            ),
            pytest.param(
                "DICOMVAULT_LOGGING_LEVEL",
                "TRACE",
                "must be one of DEBUG, INFO, WARNING, ERROR, got 'TRACE'",
                id="log_level",
            ),
            pytest.param(
                "DICOMVAULT_STORAGE_DATA_DIR", " ", "must be a non-empty path", id="data_dir"
            ),
            pytest.param(
                "DICOMVAULT_QUERY_MAX_MATCHES",
                "0",
                "must be an integer from 1 to 10000000, got 0",
                id="max_matches",
            ),
        ],
    )
    def test_environment_value(self, variable: str, value: str, reason: str) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ={variable: value})
        assert str(excinfo.value) == f"Invalid setting {variable}: {reason}"


class TestAeTitles:
    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("A", id="one_char"),
            pytest.param("ABCDEFGHIJKLMNOP", id="16_chars"),
            pytest.param("STORE SCP", id="inner_space"),
        ],
    )
    def test_valid(self, value: str) -> None:
        settings = load_settings(environ={"DICOMVAULT_DIMSE_AE_TITLE": value})
        assert settings.dimse.ae_title == value

    def test_padding_removed(self) -> None:
        settings = load_settings(environ={"DICOMVAULT_DIMSE_AE_TITLE": "  STORE1 "})
        assert settings.dimse.ae_title == "STORE1"

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("ABCDEFGHIJKLMNOPQ", id="17_chars"),
            pytest.param("STORE\\SCP", id="backslash"),
            pytest.param("", id="empty"),
            pytest.param("   ", id="only_spaces"),
            pytest.param("STÖRE", id="non_ascii"),
            pytest.param("STORE\tSCP", id="control_char"),
        ],
    )
    def test_invalid(self, value: str) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ={"DICOMVAULT_DIMSE_AE_TITLE": value})
        assert str(excinfo.value) == (
            f"Invalid setting DICOMVAULT_DIMSE_AE_TITLE: {AE_TITLE_FORM}, got {value!r}"
        )

    def test_allowed_list_from_environment(self) -> None:
        environ = {"DICOMVAULT_DIMSE_ALLOWED_CALLING_AE_TITLES": "CT01, MR02,US03"}
        settings = load_settings(environ=environ)
        assert settings.dimse.allowed_calling_ae_titles == ["CT01", "MR02", "US03"]

    def test_allowed_list_with_inner_space(self) -> None:
        # An AE title may contain inner spaces, so only commas separate the titles.
        environ = {"DICOMVAULT_DIMSE_ALLOWED_CALLING_AE_TITLES": "STORE SCU,CT01"}
        settings = load_settings(environ=environ)
        assert settings.dimse.allowed_calling_ae_titles == ["STORE SCU", "CT01"]

    def test_allowed_list_invalid_item(self) -> None:
        environ = {"DICOMVAULT_DIMSE_ALLOWED_CALLING_AE_TITLES": "CT01,ABCDEFGHIJKLMNOPQ"}
        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ=environ)
        assert str(excinfo.value) == (
            "Invalid setting DICOMVAULT_DIMSE_ALLOWED_CALLING_AE_TITLES: "
            f"{AE_TITLE_FORM}, got 'ABCDEFGHIJKLMNOPQ'"
        )


class TestUnknownCallers:
    def test_default_accepts(self) -> None:
        assert load_settings(environ={}).dimse.unknown_callers == "accept"

    @pytest.mark.parametrize(
        ("value", "parsed"),
        [
            pytest.param('"reject"', "reject", id="reject"),
            pytest.param('" Echo "', "echo", id="echo-padded"),
            pytest.param('"store"', "store", id="one-permission"),
            pytest.param('"query, store"', "store,query", id="canonical-order"),
            pytest.param('["store", "query", "retrieve"]', "accept", id="every-permission"),
            pytest.param("[]", "echo", id="empty-list"),
        ],
    )
    def test_file_value(self, tmp_path: Path, value: str, parsed: str) -> None:
        path = write_config(tmp_path, f"[dimse]\nunknown_callers = {value}\n")

        assert load_settings(path, environ={}).dimse.unknown_callers == parsed

    def test_from_environment(self) -> None:
        settings = load_settings(environ={"DICOMVAULT_DIMSE_UNKNOWN_CALLERS": "store,query"})

        assert settings.dimse.unknown_callers == "store,query"
        assert settings.sources["dimse.unknown_callers"] == "DICOMVAULT_DIMSE_UNKNOWN_CALLERS"

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            pytest.param(
                "deny",
                "must be accept, reject, echo or permissions separated by commas "
                "(store, query, retrieve), got 'deny'",
                id="unknown-word",
            ),
            pytest.param(
                "none",
                "must be accept, reject, echo or permissions (store, query, retrieve), got "
                "'none'; write accept for every permission or echo for C-ECHO only",
                id="ambiguous-none",
            ),
            pytest.param(
                "store,delete",
                "must be accept, reject, echo or permissions separated by commas "
                "(store, query, retrieve), got 'store,delete'",
                id="unknown-permission",
            ),
        ],
    )
    def test_invalid(self, value: str, message: str) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ={"DICOMVAULT_DIMSE_UNKNOWN_CALLERS": value})
        assert str(excinfo.value) == (
            f"Invalid setting DICOMVAULT_DIMSE_UNKNOWN_CALLERS: {message}"
        )


class TestNodeAccessInFile:
    def test_access_keys_read(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path,
            "[nodes.CT01]\n"
            'host = "10.0.0.5"\n'
            "port = 104\n"
            'permissions = ["store"]\n'
            'source_addresses = ["10.0.0.5", "10.0.1.0/24"]\n'
            'tls_client_subject = "CN=ct01.example.org, O=Hospital"\n',
        )

        (node,) = load_settings(path, environ={}).nodes

        assert node.permissions == frozenset({Permission.STORE})
        assert node.source_addresses == ("10.0.0.5", "10.0.1.0/24")
        assert node.tls_client_subject == "CN=ct01.example.org,O=Hospital"

    def test_invalid_permission_named(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path, '[nodes.CT01]\nhost = "10.0.0.5"\nport = 104\npermissions = ["stor"]\n'
        )

        with pytest.raises(ConfigError) as excinfo:
            load_settings(path, environ={})
        assert str(excinfo.value) == (
            f"Invalid node in file {path}: [nodes.CT01]: 'permissions' must contain only "
            "store, query, retrieve, got 'stor'"
        )

    def test_restricted_node_described(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path, '[nodes.CT01]\nhost = "10.0.0.5"\nport = 104\npermissions = "store"\n'
        )

        displayed, source = described(load_settings(path, environ={}))["nodes.CT01"]

        assert displayed == "10.0.0.5:104; permissions: store"
        assert source == "file"


class TestDescribeSettings:
    def test_every_setting_listed(self) -> None:
        rows = describe_settings(load_settings(environ={}))
        assert [name for name, _, _ in rows] == [definition.name for definition in SETTINGS]

    def test_postgresql_password_masked(self) -> None:
        url = "postgresql://dicomvault:s3cret@127.0.0.1:5432/dicomvault"
        settings = load_settings(environ={"DICOMVAULT_INDEX_URL": url})
        displayed, source = described(settings)["index.url"]
        assert displayed == '"postgresql://dicomvault:********@127.0.0.1:5432/dicomvault"'
        assert source == "DICOMVAULT_INDEX_URL"

    def test_default_sqlite_url_shown(self, tmp_path: Path) -> None:
        settings = load_settings(environ={}, overrides={"storage.data_dir": str(tmp_path)})
        displayed, source = described(settings)["index.url"]
        assert displayed == f'"sqlite:///{tmp_path.resolve() / "index.sqlite"}"'
        assert source == "default"

    @pytest.mark.parametrize(
        ("name", "displayed"),
        [
            pytest.param("dimse.ae_title", '"DICOMVAULT"', id="string"),
            pytest.param("dimse.port", "11112", id="integer"),
            pytest.param("dimse.allowed_calling_ae_titles", "[]", id="list"),
            pytest.param("dimse.unknown_callers", '"accept"', id="unknown-callers"),
            pytest.param("query.person_name_case_insensitive", "true", id="bool"),
        ],
    )
    def test_value_format(self, name: str, displayed: str) -> None:
        assert described(load_settings(environ={}))[name][0] == displayed

    @pytest.mark.parametrize(
        ("url", "masked"),
        [
            pytest.param(
                "postgresql+psycopg://user:pw@db:5432/index",
                "postgresql+psycopg://user:********@db:5432/index",
                id="driver",
            ),
            pytest.param(
                "postgresql://user@db/index", "postgresql://user@db/index", id="no_password"
            ),
            pytest.param("sqlite:///data/index.sqlite", "sqlite:///data/index.sqlite", id="sqlite"),
        ],
    )
    def test_mask_url_password(self, url: str, masked: str) -> None:
        assert mask_url_password(url) == masked


class TestEnvironmentNames:
    def test_unknown_variable_rejected(self) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ={"DICOMVAULT_DIMSE_PORTT": "4242"})
        assert str(excinfo.value).startswith(
            "Unknown environment variable DICOMVAULT_DIMSE_PORTT; known variables: "
        )


class TestRelativeDataDir:
    def test_relative_to_config_file(self, tmp_path: Path) -> None:
        config = tmp_path / "etc" / "dicomvault.toml"
        config.parent.mkdir()
        config.write_text('[storage]\ndata_dir = "archive"\n', encoding="utf-8")

        settings = load_settings(config, environ={})

        assert settings.data_dir == (tmp_path / "etc" / "archive").resolve()

    def test_option_relative_to_working_directory(self, tmp_path: Path) -> None:
        settings = load_settings(environ={}, overrides={"storage.data_dir": "archive"})

        assert settings.data_dir == (Path.cwd() / "archive").resolve()


class TestIngestSettings:
    def test_defaults(self) -> None:
        settings = load_settings(environ={})

        assert settings.ingest.import_roots == []
        assert settings.ingest.workers == 0
        assert settings.ingest.batch_size == 500
        assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)

    def test_roots_from_environment(self, tmp_path: Path) -> None:
        environ = {"DICOMVAULT_INGEST_IMPORT_ROOTS": f"{tmp_path}/a:{tmp_path}/b"}

        settings = load_settings(environ=environ)

        assert settings.import_roots == [tmp_path / "a", tmp_path / "b"]

    def test_roots_relative_to_config_file(self, tmp_path: Path) -> None:
        config = write_config(
            tmp_path, '[ingest]\nimport_roots = ["import", "/srv/other"]\nwatch_folders = ["in"]\n'
        )

        settings = load_settings(config, environ={})

        assert settings.ingest.import_roots == [str(tmp_path / "import"), "/srv/other"]
        assert settings.ingest.watch_folders == [str(tmp_path / "in")]

    def test_roots_resolve_links(self, tmp_path: Path) -> None:
        (tmp_path / "real").mkdir()
        (tmp_path / "link").symlink_to(tmp_path / "real")

        settings = load_settings(environ={"DICOMVAULT_INGEST_IMPORT_ROOTS": str(tmp_path / "link")})

        assert settings.import_roots == [(tmp_path / "real").resolve()]

    def test_roots_not_a_list(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, "[ingest]\nimport_roots = 3\n")

        with pytest.raises(ConfigError) as excinfo:
            load_settings(config, environ={})

        assert str(excinfo.value) == (
            f"Invalid setting 'ingest.import_roots' (file {config}): must be a list of paths, got 3"
        )

    def test_http_port_zero_allowed(self) -> None:
        settings = load_settings(environ={"DICOMVAULT_HTTP_PORT": "0"})

        assert settings.http.port == 0


class TestServerSettings:
    def test_defaults(self) -> None:
        settings = load_settings(environ={})

        assert settings.server.drain_delay == 0.0
        assert settings.server.drain_seconds == 30.0
        assert settings.server.readiness_timeout == 2.0
        assert settings.http.metrics_access == "users"

    def test_from_environment(self) -> None:
        settings = load_settings(
            environ={
                "DICOMVAULT_SERVER_DRAIN_DELAY": "5",
                "DICOMVAULT_SERVER_DRAIN_SECONDS": "120",
            }
        )

        assert (settings.server.drain_delay, settings.server.drain_seconds) == (5.0, 120.0)

    def test_negative_drain_rejected(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, "[server]\ndrain_seconds = -1\n")

        with pytest.raises(ConfigError) as excinfo:
            load_settings(config, environ={})

        assert str(excinfo.value) == (
            f"Invalid setting 'server.drain_seconds' (file {config}): "
            "must be a number from 0 to 3600, got -1.0"
        )

    def test_open_metrics_on_network_address_rejected(self) -> None:
        environ = {
            "DICOMVAULT_HTTP_HOST": "0.0.0.0",
            "DICOMVAULT_HTTP_DICOMWEB_ACCESS": "users",
            "DICOMVAULT_HTTP_METRICS_ACCESS": "open",
        }

        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ=environ)

        assert str(excinfo.value) == (
            "Invalid settings: 'http.host' (DICOMVAULT_HTTP_HOST) is 0.0.0.0, not a loopback "
            "address, and 'http.metrics_access' (DICOMVAULT_HTTP_METRICS_ACCESS) is open, so "
            'anyone on the network could read the metrics; set http.metrics_access = "users" '
            "and give the scraper an API token"
        )

    def test_open_metrics_on_localhost_allowed(self) -> None:
        settings = load_settings(
            environ={"DICOMVAULT_HTTP_HOST": "localhost", "DICOMVAULT_HTTP_METRICS_ACCESS": "open"}
        )

        assert settings.http.metrics_access == "open"


class TestTLSSettings:
    def test_tls_off_by_default(self) -> None:
        settings = load_settings(environ={})
        assert settings.dimse.tls_port == 0
        assert settings.http.tls_cert_file == ""
        assert settings.http.trusted_proxies == []

    def test_tls_port_with_files(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path,
            '[dimse]\nport = 0\ntls_port = 2762\ntls_cert_file = "certs/server.pem"\n'
            'tls_key_file = "/etc/dicomvault/server-key.pem"\n',
        )
        settings = load_settings(path, environ={})
        assert settings.dimse.port == 0
        assert settings.dimse.tls_port == 2762
        # Relative to the file's folder; an absolute path stays as it is.
        assert settings.dimse.tls_cert_file == str(tmp_path.resolve() / "certs/server.pem")
        assert settings.dimse.tls_key_file == "/etc/dicomvault/server-key.pem"

    def test_node_files_relative_to_file(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path,
            '[nodes.PACS2]\nhost = "127.0.0.1"\nport = 104\ntls = true\ntls_ca_file = "ca.pem"\n',
        )
        (node,) = load_settings(path, environ={}).nodes
        assert node.tls_ca_file == str(tmp_path.resolve() / "ca.pem")

    def test_no_port_open(self) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ={}, overrides={"dimse.port": 0})
        assert str(excinfo.value) == (
            "Invalid settings: 'dimse.port' (command line) and 'dimse.tls_port' (default) are "
            "both 0, so no DIMSE port would be open; set at least one of them"
        )

    def test_same_port_twice(self) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(
                environ={
                    "DICOMVAULT_DIMSE_TLS_PORT": "11112",
                    "DICOMVAULT_DIMSE_TLS_CERT_FILE": "/c.pem",
                    "DICOMVAULT_DIMSE_TLS_KEY_FILE": "/k.pem",
                }
            )
        assert str(excinfo.value) == (
            "Invalid settings: 'dimse.port' (default) and 'dimse.tls_port' "
            "(DICOMVAULT_DIMSE_TLS_PORT) are both 11112; DIMSE with and without TLS need "
            "different ports"
        )

    def test_tls_port_needs_certificate(self) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ={"DICOMVAULT_DIMSE_TLS_PORT": "2762"})
        assert str(excinfo.value) == (
            "Invalid settings: 'dimse.tls_port' (DICOMVAULT_DIMSE_TLS_PORT) is 2762, so "
            "'dimse.tls_cert_file' is required; 'dicomvault certs dev' creates test certificates"
        )

    def test_file_without_tls_port(self) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ={"DICOMVAULT_DIMSE_TLS_CA_FILE": "/ca.pem"})
        assert str(excinfo.value) == (
            "Invalid settings: 'dimse.tls_ca_file' (DICOMVAULT_DIMSE_TLS_CA_FILE) is set but "
            "'dimse.tls_port' is 0; set dimse.tls_port to serve DIMSE over TLS, or remove the "
            "setting"
        )

    def test_client_certificates_need_ca(self) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(
                environ={
                    "DICOMVAULT_DIMSE_TLS_PORT": "2762",
                    "DICOMVAULT_DIMSE_TLS_CERT_FILE": "/c.pem",
                    "DICOMVAULT_DIMSE_TLS_KEY_FILE": "/k.pem",
                    "DICOMVAULT_DIMSE_TLS_REQUIRE_CLIENT_CERT": "true",
                }
            )
        assert str(excinfo.value) == (
            "Invalid settings: 'dimse.tls_require_client_cert' "
            "(DICOMVAULT_DIMSE_TLS_REQUIRE_CLIENT_CERT) is true, so 'dimse.tls_ca_file' is "
            "required to verify client certificates"
        )

    def test_https_needs_key(self) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ={"DICOMVAULT_HTTP_TLS_CERT_FILE": "/c.pem"})
        assert str(excinfo.value) == (
            "Invalid settings: HTTPS needs both 'http.tls_cert_file' and 'http.tls_key_file', "
            "but only one of them is set"
        )

    def test_trusted_proxies(self) -> None:
        settings = load_settings(
            environ={"DICOMVAULT_HTTP_TRUSTED_PROXIES": "10.0.0.5, 192.168.0.0/16,::1"}
        )
        assert settings.http.trusted_proxies == ["10.0.0.5", "192.168.0.0/16", "::1"]

    def test_trusted_proxy_invalid(self) -> None:
        with pytest.raises(ConfigError) as excinfo:
            load_settings(environ={"DICOMVAULT_HTTP_TRUSTED_PROXIES": "*"})
        assert str(excinfo.value) == (
            "Invalid setting DICOMVAULT_HTTP_TRUSTED_PROXIES: must contain IP addresses or "
            "networks such as 10.0.0.5 or 10.0.0.0/24, got '*'"
        )


KEY_HEX = "00112233445566778899aabbccddeeff" * 2
KMS_ARN = "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


class TestEncryptionSettings:
    def test_off_by_default(self) -> None:
        settings = load_settings(environ={})

        assert not settings.encryption.enabled
        assert settings.encryption.key_file == ""

    def test_key_file_relative_to_config_file(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path, '[encryption]\nenabled = true\nkey_file = "keys/master.key"\n'
        )

        settings = load_settings(path, environ={})

        assert settings.encryption.key_file == str(tmp_path / "keys" / "master.key")

    def test_key_in_file_rejected(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, f'[encryption]\nenabled = true\nkey = "{KEY_HEX}"\n')

        with pytest.raises(ConfigError) as raised:
            load_settings(path, environ={})

        assert str(raised.value) == (
            f"Setting 'encryption.key' cannot be set in file {path}, which other users may be "
            "able to read; set the environment variable DICOMVAULT_ENCRYPTION_KEY instead, "
            "or use a key file"
        )
        assert KEY_HEX not in str(raised.value)

    def test_enabled_needs_key(self) -> None:
        message = r"a master key is required in 'encryption\.key_file'"
        with pytest.raises(ConfigError, match=message):
            load_settings(environ={"DICOMVAULT_ENCRYPTION_ENABLED": "true"})

    def test_two_current_keys_rejected(self) -> None:
        environ = {
            "DICOMVAULT_ENCRYPTION_ENABLED": "true",
            "DICOMVAULT_ENCRYPTION_KEY_FILE": "/k",
            "DICOMVAULT_ENCRYPTION_KEY": KEY_HEX,
        }

        with pytest.raises(ConfigError, match="set only one of them") as raised:
            load_settings(environ=environ)

        assert KEY_HEX not in str(raised.value)

    def test_key_without_enabled_rejected(self) -> None:
        with pytest.raises(ConfigError) as raised:
            load_settings(environ={"DICOMVAULT_ENCRYPTION_KEY": KEY_HEX})

        assert str(raised.value) == (
            "Invalid settings: 'encryption.key' (DICOMVAULT_ENCRYPTION_KEY) is set but "
            "'encryption.enabled' is false, so stored files would not be encrypted; set "
            "encryption.enabled = true, or remove the setting"
        )

    def test_keys_masked_in_description(self) -> None:
        settings = load_settings(
            environ={
                "DICOMVAULT_ENCRYPTION_ENABLED": "true",
                "DICOMVAULT_ENCRYPTION_KEY": KEY_HEX,
                "DICOMVAULT_ENCRYPTION_PREVIOUS_KEYS": KEY_HEX[::-1],
            }
        )

        rows = described(settings)

        assert rows["encryption.key"] == ("********", "DICOMVAULT_ENCRYPTION_KEY")
        assert rows["encryption.previous_keys"][0] == "********"
        assert KEY_HEX not in repr(settings)
        assert KEY_HEX[::-1] not in repr(settings)

    def test_kms_settings_from_environment(self) -> None:
        environ = {
            "DICOMVAULT_ENCRYPTION_ENABLED": "true",
            "DICOMVAULT_ENCRYPTION_PROVIDER": "AWS-KMS",
            "DICOMVAULT_ENCRYPTION_KMS_KEY_ID": "alias/dicomvault",
            "DICOMVAULT_ENCRYPTION_KMS_PREVIOUS_KEY_IDS": (
                f"{KMS_ARN}, 1234abcd-12ab-34cd-56ef-1234567890ab"
            ),
            "DICOMVAULT_ENCRYPTION_KMS_ENDPOINT_URL": "http://127.0.0.1:4566/",
            "DICOMVAULT_ENCRYPTION_KMS_REGION": "eu-central-1",
            "DICOMVAULT_ENCRYPTION_KMS_MAX_ATTEMPTS": "8",
            "DICOMVAULT_ENCRYPTION_KMS_RETRY_MODE": "adaptive",
        }

        encryption = load_settings(environ=environ).encryption

        assert encryption.provider == "aws-kms"
        assert encryption.kms_key_id == "alias/dicomvault"
        assert encryption.kms_previous_key_ids == [
            KMS_ARN,
            "1234abcd-12ab-34cd-56ef-1234567890ab",
        ]
        assert encryption.kms_endpoint_url == "http://127.0.0.1:4566"
        assert encryption.kms_region == "eu-central-1"
        assert encryption.kms_max_attempts == 8
        assert encryption.kms_retry_mode == "adaptive"

    def test_kms_provider_needs_key_id(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[encryption]\nenabled = true\nprovider = "aws-kms"\n')

        with pytest.raises(ConfigError) as raised:
            load_settings(path, environ={})

        assert str(raised.value) == (
            f"Invalid settings: 'encryption.provider' (file {path}) is aws-kms, so "
            "'encryption.kms_key_id' is required; set it to the id, alias name or ARN of a "
            "symmetric KMS key"
        )

    def test_key_file_with_kms_provider_rejected(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path,
            '[encryption]\nenabled = true\nprovider = "aws-kms"\n'
            'kms_key_id = "alias/dicomvault"\nkey_file = "/k"\n',
        )

        with pytest.raises(ConfigError) as raised:
            load_settings(path, environ={})

        assert str(raised.value) == (
            f"Invalid settings: 'encryption.key_file' (file {path}) is set but "
            f"'encryption.provider' (file {path}) is aws-kms, whose current master key is "
            "encryption.kms_key_id; remove the setting, or list a local key that stored "
            "files still need in encryption.previous_key_files"
        )

    def test_previous_key_files_with_kms_provider(self) -> None:
        environ = {
            "DICOMVAULT_ENCRYPTION_ENABLED": "true",
            "DICOMVAULT_ENCRYPTION_PROVIDER": "aws-kms",
            "DICOMVAULT_ENCRYPTION_KMS_KEY_ID": "alias/dicomvault",
            "DICOMVAULT_ENCRYPTION_PREVIOUS_KEY_FILES": "/old.key",
        }

        encryption = load_settings(environ=environ).encryption

        assert encryption.previous_key_files == ["/old.key"]

    def test_kms_setting_with_local_provider_rejected(self) -> None:
        environ = {
            "DICOMVAULT_ENCRYPTION_ENABLED": "true",
            "DICOMVAULT_ENCRYPTION_KEY_FILE": "/k",
            "DICOMVAULT_ENCRYPTION_KMS_KEY_ID": "alias/dicomvault",
        }

        with pytest.raises(ConfigError) as raised:
            load_settings(environ=environ)

        assert str(raised.value) == (
            "Invalid settings: 'encryption.kms_key_id' (DICOMVAULT_ENCRYPTION_KMS_KEY_ID) is "
            "set but 'encryption.provider' is local, so no KMS key would be used; set "
            'encryption.provider = "aws-kms", or remove the setting'
        )

    def test_kms_provider_without_enabled_rejected(self) -> None:
        with pytest.raises(ConfigError) as raised:
            load_settings(environ={"DICOMVAULT_ENCRYPTION_PROVIDER": "aws-kms"})

        assert str(raised.value) == (
            "Invalid settings: 'encryption.provider' (DICOMVAULT_ENCRYPTION_PROVIDER) is set "
            "but 'encryption.enabled' is false, so stored files would not be encrypted; set "
            "encryption.enabled = true, or remove the setting"
        )

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("alias dicomvault", id="space"),
            pytest.param("arn:aws:s3:::bucket", id="not_kms_arn"),
            pytest.param("key/1234", id="slash_without_alias"),
        ],
    )
    def test_invalid_kms_key_id(self, value: str) -> None:
        environ = {
            "DICOMVAULT_ENCRYPTION_ENABLED": "true",
            "DICOMVAULT_ENCRYPTION_PROVIDER": "aws-kms",
            "DICOMVAULT_ENCRYPTION_KMS_KEY_ID": value,
        }

        with pytest.raises(ConfigError) as raised:
            load_settings(environ=environ)

        assert str(raised.value).startswith(
            "Invalid setting DICOMVAULT_ENCRYPTION_KMS_KEY_ID: must be empty or a KMS key id, "
            "alias name or ARN, such as "
        )

    def test_saved_encryption_setting_rejected(self) -> None:
        settings = load_settings(environ={})

        with pytest.raises(ConfigError, match=r"'encryption\.enabled' can only be set in"):
            apply_saved_settings(settings, {"encryption.enabled": False})


class TestStorageBackendSettings:
    def test_filesystem_by_default(self) -> None:
        settings = load_settings(environ={})

        assert settings.storage.backend == "filesystem"
        assert settings.storage.s3_bucket == ""
        assert settings.storage.s3_part_size == 16 * 1024 * 1024
        assert settings.storage.s3_max_attempts == 5
        assert settings.storage.s3_retry_mode == "standard"

    def test_s3_from_environment(self) -> None:
        environ = {
            "DICOMVAULT_STORAGE_BACKEND": "S3",
            "DICOMVAULT_STORAGE_S3_BUCKET": "dicomvault-archive",
            "DICOMVAULT_STORAGE_S3_PREFIX": "site-a/dicom",
            "DICOMVAULT_STORAGE_S3_ENDPOINT_URL": "http://127.0.0.1:9000/",
            "DICOMVAULT_STORAGE_S3_SERVER_SIDE_ENCRYPTION": "aes256",
        }

        storage = load_settings(environ=environ).storage

        assert storage.backend == "s3"
        assert storage.s3_bucket == "dicomvault-archive"
        assert storage.s3_prefix == "site-a/dicom/"
        assert storage.s3_endpoint_url == "http://127.0.0.1:9000"
        assert storage.s3_server_side_encryption == "AES256"

    def test_s3_needs_bucket(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[storage]\nbackend = "s3"\n')

        with pytest.raises(ConfigError) as raised:
            load_settings(path, environ={})

        assert str(raised.value) == (
            f"Invalid settings: 'storage.backend' (file {path}) is s3, so 'storage.s3_bucket' "
            "is required; set it to the name of an existing bucket"
        )

    def test_s3_setting_without_s3_backend(self) -> None:
        with pytest.raises(ConfigError) as raised:
            load_settings(environ={"DICOMVAULT_STORAGE_S3_BUCKET": "archive"})

        assert str(raised.value) == (
            "Invalid settings: 'storage.s3_bucket' (DICOMVAULT_STORAGE_S3_BUCKET) is set but "
            "'storage.backend' is filesystem, so files would not go to S3; set "
            'storage.backend = "s3", or remove the setting'
        )

    def test_kms_key_needs_kms_encryption(self) -> None:
        environ = {
            "DICOMVAULT_STORAGE_BACKEND": "s3",
            "DICOMVAULT_STORAGE_S3_BUCKET": "archive",
            "DICOMVAULT_STORAGE_S3_KMS_KEY_ID": "alias/archive",
        }

        with pytest.raises(ConfigError, match="must be aws:kms or aws:kms:dsse"):
            load_settings(environ=environ)

    @pytest.mark.parametrize(
        ("name", "value", "message"),
        [
            ("S3_BUCKET", "Archive_1", "must be empty or an S3 bucket name"),
            ("S3_PREFIX", "/absolute", "must be empty or a relative path"),
            ("S3_PREFIX", "a/../b", "must be empty or a relative path"),
            ("S3_ENDPOINT_URL", "127.0.0.1:9000", "must be empty (AWS) or an http or https URL"),
            ("S3_ENDPOINT_URL", "http://host/?x=1", "must be empty (AWS) or an http or https URL"),
            ("S3_ENDPOINT_URL", "http://key:secret@host", "must not contain a user name or"),
            ("S3_ENDPOINT_URL", "http://host:99999", "must have a port from 1 to 65535"),
            ("S3_REGION", "EU Central", "must be empty or a region name"),
            ("S3_SERVER_SIDE_ENCRYPTION", "SSE-C", "must be empty or one of AES256, aws:kms"),
            ("S3_PART_SIZE", "1024", "must be an integer from 5242880 to 5368709120"),
            ("S3_RETRY_MODE", "legacy", "must be one of standard, adaptive"),
        ],
        ids=lambda value: value if isinstance(value, str) and len(value) < 30 else None,
    )
    def test_invalid_value(self, name: str, value: str, message: str) -> None:
        environ = {
            "DICOMVAULT_STORAGE_BACKEND": "s3",
            "DICOMVAULT_STORAGE_S3_BUCKET": "archive",
            f"DICOMVAULT_STORAGE_{name}": value,
        }

        with pytest.raises(ConfigError) as raised:
            load_settings(environ=environ)

        assert str(raised.value).startswith(f"Invalid setting DICOMVAULT_STORAGE_{name}: ")
        assert message in str(raised.value)
        assert "secret" not in str(raised.value)

    def test_saved_storage_setting_rejected(self) -> None:
        settings = load_settings(environ={})

        with pytest.raises(ConfigError, match=r"'storage\.backend' can only be set in"):
            apply_saved_settings(settings, {"storage.backend": "s3"})


OIDC_SECRET = "oidc client secret for tests"
OIDC_ENVIRON = {
    "DICOMVAULT_AUTH_OIDC_ISSUER": "http://127.0.0.1:9400/",
    "DICOMVAULT_AUTH_OIDC_CLIENT_ID": "dicomvault",
    "DICOMVAULT_AUTH_OIDC_CLIENT_SECRET": OIDC_SECRET,
    "DICOMVAULT_AUTH_OIDC_ADMIN_VALUES": "pacs-admins, it",
}


class TestAuthSettings:
    def test_single_sign_on_off_by_default(self) -> None:
        settings = load_settings(environ={})

        assert settings.auth.oidc_issuer == ""
        assert settings.auth.local_login
        assert settings.auth.oidc_scopes == "openid profile email"
        assert settings.auth.oidc_name_claim == "preferred_username"

    def test_oidc_settings_from_environment(self) -> None:
        settings = load_settings(environ=OIDC_ENVIRON)

        assert settings.auth.oidc_issuer == "http://127.0.0.1:9400"
        assert settings.auth.oidc_admin_values == ["pacs-admins", "it"]
        assert OIDC_SECRET not in repr(settings)

    def test_client_secret_masked_in_description(self) -> None:
        rows = described(load_settings(environ=OIDC_ENVIRON))

        assert rows["auth.oidc_client_secret"] == (
            "********",
            "DICOMVAULT_AUTH_OIDC_CLIENT_SECRET",
        )

    def test_client_secret_in_file_rejected(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, f'[auth]\noidc_client_secret = "{OIDC_SECRET}"\n')

        with pytest.raises(ConfigError, match="DICOMVAULT_AUTH_OIDC_CLIENT_SECRET") as raised:
            load_settings(path, environ={})

        assert OIDC_SECRET not in str(raised.value)

    def test_issuer_needs_client_secret(self) -> None:
        environ = {**OIDC_ENVIRON}
        del environ["DICOMVAULT_AUTH_OIDC_CLIENT_SECRET"]

        with pytest.raises(ConfigError, match="exactly one of DICOMVAULT_AUTH_OIDC_CLIENT_SECRET"):
            load_settings(environ=environ)

    def test_issuer_needs_role_values(self) -> None:
        environ = {**OIDC_ENVIRON}
        del environ["DICOMVAULT_AUTH_OIDC_ADMIN_VALUES"]

        with pytest.raises(ConfigError, match="every single sign-on login would be rejected"):
            load_settings(environ=environ)

    def test_local_login_off_needs_issuer(self) -> None:
        with pytest.raises(ConfigError, match="nobody could log in to the console"):
            load_settings(environ={"DICOMVAULT_AUTH_LOCAL_LOGIN": "false"})

    def test_scopes_need_openid(self) -> None:
        environ = {**OIDC_ENVIRON, "DICOMVAULT_AUTH_OIDC_SCOPES": "profile email"}

        with pytest.raises(ConfigError, match="must contain the scope openid"):
            load_settings(environ=environ)

    def test_saved_auth_setting_rejected(self) -> None:
        settings = load_settings(environ={})

        with pytest.raises(ConfigError, match=r"'auth\.local_login' can only be set in"):
            apply_saved_settings(settings, {"auth.local_login": False})
