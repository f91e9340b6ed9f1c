"""Configuration: TOML + environment, validation naming the setting, secrets out of reprs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot.config import Config, load_config
from bot.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_pick_the_local_backend_without_esd() -> None:
    config = load_config({}, path=None)
    assert config.backend == "local"
    assert config.max_side == 1024


def test_esd_url_switches_the_default_backend() -> None:
    config = load_config({"ESD_API_URL": "http://127.0.0.1:9/prod/", "ESD_API_KEY": "k" * 20})
    assert config.backend == "esd"
    assert config.secrets.esd_api_key == "k" * 20


def test_example_file_lists_every_setting_and_loads() -> None:
    example = ROOT / "sdbot.example.toml"
    config = load_config({}, path=example)
    assert config == Config()
    text = example.read_text()
    names = [f.name for f in dataclasses.fields(Config) if f.name != "secrets"]
    missing = [n for n in names if f"{n} =" not in text]
    assert missing == []


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    file = tmp_path / "sdbot.toml"
    file.write_text('max_side = 512\nadmins = ["U1"]\n')
    config = load_config({"SDBOT_MAX_SIDE": "768", "SDBOT_ADMINS": "U2, U3"}, path=file)
    assert config.max_side == 768
    assert config.admins == ("U2", "U3")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SDBOT_MAX_SIDE": "huge"}, "SDBOT_MAX_SIDE"),
        ({"SDBOT_MAX_SIDE": "1001"}, "max_side"),
        ({"SDBOT_BACKEND": "gpu"}, "SDBOT_BACKEND"),
        ({"SDBOT_BACKEND": "esd"}, "ESD_API_URL"),
        ({"SDBOT_LOCAL_DELAY": "-1"}, "SDBOT_LOCAL_DELAY"),
        ({"SDBOT_HTTP_PORT": "70000"}, "SDBOT_HTTP_PORT"),
        ({"SDBOT_INFERENCE_TYPE": "Batch"}, "inference_type"),
    ],
)
def test_bad_values_fail_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(env)


def test_unknown_key_and_bad_toml(tmp_path: Path) -> None:
    file = tmp_path / "sdbot.toml"
    file.write_text("max_sides = 3\n")
    with pytest.raises(ConfigError, match="unknown setting `max_sides`"):
        load_config({}, path=file)
    file.write_text("max_side = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({}, path=file)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config({}, path=tmp_path / "absent.toml")


def test_secrets_never_in_repr() -> None:
    config = load_config(
        {
            "DISCORD_TOKEN": "discord-secret-123",
            "ESD_API_KEY": "esdkey12345",
            "SDBOT_BACKEND": "local",
        }
    )
    assert "discord-secret-123" not in repr(config)
    assert "esdkey12345" not in repr(config.secrets)
    assert set(config.secrets.values()) == {"discord-secret-123", "esdkey12345"}


@pytest.mark.parametrize(
    ("raw", "expected"), [("false", False), ("no", False), ("1", True), ("on", True)]
)
def test_booleans_read_as_booleans(raw: str, expected: bool) -> None:
    assert load_config({"SDBOT_DISCORD_MESSAGE_CONTENT": raw}).discord_message_content is expected


def test_a_bad_boolean_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="SDBOT_DISCORD_MESSAGE_CONTENT"):
        load_config({"SDBOT_DISCORD_MESSAGE_CONTENT": "maybe"})


def test_discord_shards_are_checked_and_read_as_numbers() -> None:
    config = load_config({"SDBOT_DISCORD_SHARD_COUNT": "4", "SDBOT_DISCORD_SHARD_IDS": "0, 2"})
    assert (config.discord_shard_count, config.discord_shard_ids) == (4, (0, 2))
    with pytest.raises(ConfigError, match="shard 4 is not between 0 and"):
        load_config({"SDBOT_DISCORD_SHARD_COUNT": "4", "SDBOT_DISCORD_SHARD_IDS": "4"})
    with pytest.raises(ConfigError, match="needs discord_shard_count"):
        load_config({"SDBOT_DISCORD_SHARD_IDS": "1"})
