"""Settings saved in the index database and their precedence over the configuration."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from dicomvault.config import SAVED_SOURCE, ConfigError, apply_saved_settings, load_settings
from dicomvault.index.saved_settings import SavedSettings


class TestSavedSettings:
    def test_save_and_load(self, migrated_engine: Engine) -> None:
        saved = SavedSettings(migrated_engine)

        saved.save({"dimse.port": 4242, "dimse.allowed_calling_ae_titles": ["CT01"]}, "alice")
        saved.save({"dimse.port": 4243}, "bob")

        assert saved.load() == {"dimse.port": 4243, "dimse.allowed_calling_ae_titles": ["CT01"]}

    def test_clear_some(self, migrated_engine: Engine) -> None:
        saved = SavedSettings(migrated_engine)
        saved.save({"dimse.port": 4242, "dimse.ae_title": "A"}, "alice")

        removed = saved.clear(["dimse.port"])

        assert removed == 1
        assert saved.load() == {"dimse.ae_title": "A"}

    def test_clear_all(self, migrated_engine: Engine) -> None:
        saved = SavedSettings(migrated_engine)
        saved.save({"dimse.port": 4242, "dimse.ae_title": "A"}, "alice")

        assert saved.clear() == 2
        assert saved.load() == {}


class TestApplySavedSettings:
    def test_wins_over_command_line(self) -> None:
        configured = load_settings(environ={}, overrides={"dimse.port": "4000"})

        settings = apply_saved_settings(configured, {"dimse.port": 4242})

        assert settings.dimse.port == 4242
        assert settings.sources["dimse.port"] == SAVED_SOURCE
        assert configured.dimse.port == 4000

    def test_other_settings_kept(self) -> None:
        configured = load_settings(environ={"DICOMVAULT_DIMSE_AE_TITLE": "FROMENV"})

        settings = apply_saved_settings(configured, {"dimse.port": 4242})

        assert settings.dimse.ae_title == "FROMENV"
        assert settings.sources["dimse.ae_title"] == "DICOMVAULT_DIMSE_AE_TITLE"

    def test_invalid_value(self) -> None:
        with pytest.raises(ConfigError) as caught:
            apply_saved_settings(load_settings(environ={}), {"dimse.port": 70000})

        assert str(caught.value) == (
            "Invalid setting saved in the index database: "
            "'dimse.port' must be an integer from 0 to 65535, got 70000"
        )

    def test_no_port_left(self) -> None:
        with pytest.raises(ConfigError) as caught:
            apply_saved_settings(load_settings(environ={}), {"dimse.port": 0})

        assert "are both 0, so no DIMSE port would be open" in str(caught.value)

    def test_unknown_name(self) -> None:
        with pytest.raises(ConfigError) as caught:
            apply_saved_settings(load_settings(environ={}), {"dimse.colour": "red"})

        assert str(caught.value) == (
            "Invalid setting saved in the index database: Unknown setting 'dimse.colour'"
        )
