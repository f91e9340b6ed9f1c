"""Configuration: TOML + environment into typed sections, validation naming the setting,
secrets out of reprs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pytest

from adapters.cli import SECTIONS, RunSettings, load_config
from adapters.discord.settings import DiscordSettings
from adapters.slack.settings import SlackSettings
from bot.config import Config, Env, Secret, Section, environment_names, load_settings
from bot.errors import ConfigError
from cloud.esd.config import EsdSettings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_pick_the_local_backend_without_esd() -> None:
    settings = load_config({}, path=None)
    assert settings[RunSettings].backend == "local"
    assert settings.core.max_side == 1024


def test_esd_url_switches_the_default_backend() -> None:
    settings = load_config({"ESD_API_URL": "http://127.0.0.1:9/prod/", "ESD_API_KEY": "k" * 20})
    assert settings[RunSettings].backend == "esd"
    assert settings[EsdSettings].esd_api_key == "k" * 20


def test_example_file_lists_every_setting_and_loads() -> None:
    example = ROOT / "sdbot.example.toml"
    settings = load_config({}, path=example)
    assert settings.core == Config()
    text = example.read_text()
    names = [
        name
        for kind in SECTIONS
        for name, info in kind.model_fields.items()
        if not any(isinstance(m, Secret) for m in info.metadata)
    ]
    missing = [n for n in names if f"{n} =" not in text]
    assert missing == []


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    file = tmp_path / "sdbot.toml"
    file.write_text('max_side = 512\nadmins = ["U1"]\ndiscord_guilds = [123]\n')
    settings = load_config({"SDBOT_MAX_SIDE": "768", "SDBOT_ADMINS": "U2, U3"}, path=file)
    assert settings.core.max_side == 768
    assert settings[SlackSettings].admins == ("U2", "U3")
    assert settings[DiscordSettings].discord_guilds == ("123",)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SDBOT_MAX_SIDE": "huge"}, "SDBOT_MAX_SIDE"),
        ({"SDBOT_MAX_SIDE": "1001"}, "max_side"),
        ({"SDBOT_BACKEND": "gpu"}, "SDBOT_BACKEND"),
        ({"SDBOT_BACKEND": "esd"}, "ESD_API_URL"),
        ({"SDBOT_LOCAL_DELAY": "-1"}, "SDBOT_LOCAL_DELAY"),
        ({"SDBOT_HTTP_PORT": "70000"}, "SDBOT_HTTP_PORT"),
        ({"SDBOT_INFERENCE_TYPE": "Batch"}, "SDBOT_INFERENCE_TYPE.*'Async' or 'Real-time'"),
        ({"SDBOT_ESD_TIMEOUT": "soon"}, "SDBOT_ESD_TIMEOUT"),
        ({"SDBOT_METRICS_PORT": "0"}, "SDBOT_METRICS_PORT"),
    ],
)
def test_bad_values_fail_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(env)


def test_a_bad_value_in_the_file_names_the_key(tmp_path: Path) -> None:
    file = tmp_path / "sdbot.toml"
    file.write_text('esd_timeout = "soon"\n')
    with pytest.raises(ConfigError, match="setting `esd_timeout` has an invalid value: 'soon'"):
        load_config({}, path=file)


def test_unknown_key_and_bad_toml(tmp_path: Path) -> None:
    file = tmp_path / "sdbot.toml"
    file.write_text("max_sides = 3\n")
    with pytest.raises(ConfigError, match="unknown setting `max_sides`"):
        load_config({}, path=file)
    file.write_text('discord_token = "in the file"\n')  # credentials come from the environment
    with pytest.raises(ConfigError, match="unknown setting `discord_token`"):
        load_config({}, path=file)
    file.write_text("max_side = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({}, path=file)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config({}, path=tmp_path / "absent.toml")


def test_secrets_never_in_repr() -> None:
    settings = load_config(
        {
            "DISCORD_TOKEN": "discord-secret-123",
            "ESD_API_KEY": "esdkey12345",
            "SDBOT_BACKEND": "local",
        }
    )
    assert "discord-secret-123" not in repr(settings[DiscordSettings])
    assert "esdkey12345" not in repr(settings[EsdSettings])
    assert settings[DiscordSettings].discord_token == "discord-secret-123"
    assert set(settings.redaction().secrets) == {"discord-secret-123", "esdkey12345"}


@pytest.mark.parametrize(
    ("raw", "expected"), [("false", False), ("no", False), ("1", True), ("on", True)]
)
def test_booleans_read_as_booleans(raw: str, expected: bool) -> None:
    settings = load_config({"SDBOT_DISCORD_MESSAGE_CONTENT": raw})
    assert settings[DiscordSettings].discord_message_content is expected


def test_a_bad_boolean_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="SDBOT_DISCORD_MESSAGE_CONTENT"):
        load_config({"SDBOT_DISCORD_MESSAGE_CONTENT": "maybe"})


def test_discord_shards_are_checked_and_read_as_numbers() -> None:
    config = load_config({"SDBOT_DISCORD_SHARD_COUNT": "4", "SDBOT_DISCORD_SHARD_IDS": "0, 2"})
    discord = config[DiscordSettings]
    assert (discord.discord_shard_count, discord.discord_shard_ids) == (4, (0, 2))
    with pytest.raises(ConfigError, match="shard 4 is not between 0 and"):
        load_config({"SDBOT_DISCORD_SHARD_COUNT": "4", "SDBOT_DISCORD_SHARD_IDS": "4"})
    with pytest.raises(ConfigError, match="needs discord_shard_count"):
        load_config({"SDBOT_DISCORD_SHARD_IDS": "1"})


class _Widget(Section):
    """A section a new component would declare: nothing in bot/ changes for it."""

    widget_url: Annotated[str | None, Env("WIDGET_URL")] = None
    widget_size: int = 3
    widget_key: Annotated[str | None, Secret("WIDGET_KEY")] = None


def test_a_new_section_reads_its_own_settings(tmp_path: Path) -> None:
    file = tmp_path / "sdbot.toml"
    file.write_text("widget_size = 5\nmax_side = 512\n")
    env = {"WIDGET_URL": "http://w", "WIDGET_KEY": "widget-key-1", "SDBOT_WIDGET_SIZE": "7"}
    settings = load_settings([Config, _Widget], env, path=file)
    widget = settings[_Widget]
    assert (widget.widget_url, widget.widget_size, widget.widget_key) == (
        "http://w",
        7,
        "widget-key-1",
    )
    assert settings.core.max_side == 512
    assert settings.redaction().secrets == ("widget-key-1",)
    assert "widget-key-1" not in repr(widget)


def test_environment_names_are_every_variable_the_settings_read() -> None:
    names = environment_names(SECTIONS)
    assert {"SDBOT_CONFIG", "SDBOT_MAX_BYTES", "ESD_API_URL", "SDBOT_ESD_API_URL"} <= names
    assert {"ESD_API_KEY", "DISCORD_TOKEN", "SLACK_SIGNING_SECRET", "A1111_API_AUTH"} <= names
    # A credential is read from its own variable only.
    assert "SDBOT_ESD_API_KEY" not in names and "SDBOT_DISCORD_TOKEN" not in names
