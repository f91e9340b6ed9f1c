"""Slash commands generated from the declarations, and their sync to Discord.

The generated payloads are checked against `commands.COMMANDS` / `OPTIONS` and Discord's
limits; sync is checked against the fake: guild or global, and no re-sync without a change.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import discord
import pytest
from discord import app_commands
from scenario_kit import fast_config, make_app, png

from adapters.cli import discord_core
from adapters.discord import REQUIRED_PERMISSIONS, DiscordAdapter, invite_url
from adapters.discord.commands import IMG2IMG_MENU, INTERROGATE_MENU, slash_command, slash_options
from adapters.discord.settings import DiscordSettings
from bot.errors import ConfigError
from commands import COMMANDS, OPTIONS, CommandSpec, Family, Kind
from commands.spec import RESIZE_MODES

if TYPE_CHECKING:
    from pathlib import Path


class _Handler:
    async def run_command(self, *args: Any) -> None: ...

    async def suggest(self, *args: Any) -> list[app_commands.Choice[str]]:
        return []

    async def interrogate_message(self, *args: Any) -> None: ...

    async def img2img_from_message(self, *args: Any) -> None: ...


def _payload(spec: CommandSpec) -> dict[str, Any]:
    tree = app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))
    return slash_command(spec, _Handler()).to_dict(tree)


def _options(spec: CommandSpec) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in _payload(spec)["options"]}


async def test_every_command_is_generated_from_its_declaration() -> None:
    for spec in COMMANDS.values():
        options = _options(spec)
        slots = {a.slot.value for a in spec.attachments}
        declared = {
            name
            for name in spec.options
            if not OPTIONS[name].reply_only and OPTIONS[name].kind is not Kind.PATH
        }
        # The rarely used options share one `advanced` text option (Discord's 25-option cap).
        advanced = {name for name in declared if OPTIONS[name].advanced}
        grouped = {"advanced"} if advanced else set()
        assert set(options) == (declared - advanced) | grouped | slots, spec.name
        assert len(options) <= 25
        payload = _payload(spec)
        assert payload["name"] == spec.name and payload["description"] == spec.summary[:100]
        # Discord caps a command's names, descriptions and values at 8000 characters.
        assert len(json.dumps(payload)) < 8000
        for name, option in options.items():
            assert 1 <= len(option["description"]) <= 100
            assert len(option.get("choices", [])) <= 25
            if name in slots:
                attachment = next(a for a in spec.attachments if a.slot.value == name)
                assert option["type"] == 11 and option["required"] is attachment.required
            elif name == "advanced":
                assert option["type"] == 3 and option["required"] is False
            elif OPTIONS[name].kind is Kind.JOB_ID and spec.free_text == name:
                assert option["required"] is True
            else:
                assert option["required"] is False


async def test_types_ranges_choices_and_autocomplete() -> None:
    img2img = _options(COMMANDS["img2img"])
    steps = img2img["steps"]
    assert (steps["type"], steps["min_value"], steps["max_value"]) == (4, 1, 150)
    assert (img2img["strength"]["type"], img2img["strength"]["max_value"]) == (10, 1.0)
    assert img2img["prompt"]["max_length"] == 2000 and img2img["model"]["max_length"] == 200
    assert img2img["sampler"].get("autocomplete") is True and "choices" not in img2img["sampler"]
    assert img2img["model"].get("autocomplete") is True
    assert img2img["endpoint"].get("autocomplete") is True
    assert [c["value"] for c in img2img["resize"]["choices"]] == list(RESIZE_MODES)
    assert "input" not in img2img  # reply-only
    inpaint = _options(COMMANDS["inpaint"])
    assert inpaint["invert"]["type"] == 5 and inpaint["mask"]["required"] is False
    assert _options(COMMANDS["inpaint-sketch"])["sketch"]["required"] is True
    assert "(default 0.75)" in img2img["strength"]["description"]


async def test_a_new_declaration_becomes_a_new_option() -> None:
    spec = CommandSpec("probe", Family.QUERY, "a probe", ("steps", "status", "all"))
    options = _options(spec)
    assert [options[n]["type"] for n in ("steps", "status", "all")] == [4, 3, 5]
    assert [c["value"] for c in options["status"]["choices"]] == list(OPTIONS["status"].choices)
    assert [o.name for o in slash_options(spec)] == ["steps", "status", "all"]


async def test_settings_is_hidden_from_members_without_manage_server() -> None:
    assert _payload(COMMANDS["settings"])["default_member_permissions"] == 1 << 5
    assert _payload(COMMANDS["cancel"])["default_member_permissions"] is None


async def test_commands_are_synced_once_and_not_again_without_a_change(harness: Any) -> None:
    bot = await harness.start()
    [(scope, commands)] = bot.fake.synced
    assert scope == "global"
    names = {c["name"] for c in commands if c["type"] == 1}
    assert names == set(COMMANDS)
    menus = {c["name"] for c in commands if c["type"] == 3}
    assert menus == {INTERROGATE_MENU, IMG2IMG_MENU}
    await bot.restart()
    assert len(bot.fake.synced) == 1  # unchanged: no command creates spent
    assert await bot.adapter.sync_commands(force=True) == ["global"]
    # A changed payload (simulated by a stale stored hash) is pushed again.
    state = bot.tmp_path / "data" / "discord-commands.json"
    state.write_text(json.dumps({f"{bot.app_id}:global": "stale"}))
    await bot.restart()
    assert len(bot.fake.synced) == 3


async def test_test_guilds_get_guild_commands(harness: Any) -> None:
    bot = await harness.start(discord_guilds=(str(harness.guild), "9901"))
    assert [scope for scope, _ in bot.fake.synced] == [f"guild {bot.guild}", "guild 9901"]
    assert not bot.fake.calls("PUT", r"/applications/\d+/commands$")
    token = bot.slash("img2img", {"prompt": "guild"}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    assert job.delivery.value == "done"


async def test_bad_token_and_missing_intent_fail_at_start(tmp_path: Path, discord_api: Any) -> None:
    for token, intents, flags, message in [
        (None, discord.Intents.default(), 0, "DISCORD_TOKEN is not set"),
        ("wrong", discord.Intents.default(), 0, "rejected by Discord"),
        ("fake-bot-token", discord.Intents.all(), 0, "Message Content intent"),
    ]:
        discord_api.app_flags = flags
        config = fast_config(tmp_path, discord_token=token)
        app = make_app(config)
        adapter = DiscordAdapter(
            discord_core(app), config[DiscordSettings], client=discord.Client(intents=intents)
        )
        with pytest.raises(ConfigError, match=message):
            await adapter.start()


async def test_invite_url_asks_for_what_the_bot_needs() -> None:
    url = invite_url(2000)
    assert "client_id=2000" in url and "scope=bot+applications.commands" in url
    assert f"permissions={REQUIRED_PERMISSIONS.value}" in url
    needed = REQUIRED_PERMISSIONS
    assert needed.send_messages and needed.create_public_threads and needed.attach_files
    assert not needed.administrator and not needed.manage_messages
