"""`sdbot check` for the WebUI backend: reachable, credentials accepted, what it offers.

`GET /sdapi/v1/progress` proves the WebUI answers and takes the credentials, `/internal/sysinfo`
gives its version (only the `Version` field is read), and the checkpoints, VAEs, LoRAs and
samplers are listed. Any failure ends with one clear line and a non-zero exit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.errors import BackendError, ConfigError
from cloud.a1111.backend import A1111Backend, A1111Config

if TYPE_CHECKING:
    from typing import TextIO

    from bot.config import Config
    from cloud.a1111.backend import A1111Settings

EXIT_OK = 0
EXIT_FAILED = 1  # the WebUI is unreachable or refused us
EXIT_CONFIG = 2  # the settings themselves are wrong
_SHOWN = 8


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


async def check_webui(a1111: A1111Settings, config: Config, out: TextIO) -> int:
    """Check the configured WebUI, writing a short report to `out`; the exit status."""

    def say(line: str) -> None:
        print(line, file=out)

    try:
        settings = A1111Config.from_config(a1111, config)
        backend = A1111Backend(settings)
    except ConfigError as exc:
        say(f"error: {exc}")
        return EXIT_CONFIG
    client = backend.client
    say(f"WebUI API: {client.base} (basic auth {'on' if settings.auth else 'off'})")
    await client.start()
    try:
        try:
            await client.progress(with_image=False)
            version = await client.version()
            checkpoints = [m.name for m in await backend.models("Stable-diffusion")]
            vaes = [m.name for m in await backend.models("VAE")]
            loras = [m.name for m in await backend.models("Lora")]
            samplers = await backend.samplers()
        except BackendError as exc:
            say(f"error: {exc.user_message or exc}")
            return EXIT_FAILED
    finally:
        await client.aclose()
    say(f"WebUI version: {version or 'unknown (no /internal/sysinfo)'}")
    say(f"checkpoints ({len(checkpoints)}): {_names(checkpoints) or 'none'}")
    say(f"VAEs ({len(vaes)}): {_names(vaes) or 'none'}; LoRAs: {len(loras)}")
    say(f"samplers ({len(samplers)}): {_names(samplers) or 'none'}")
    if not checkpoints:
        say("error: the WebUI has no checkpoint, so jobs cannot run")
        return EXIT_FAILED
    say(f"jobs run {settings.concurrency} at a time; the bot queues the rest")
    say("check passed")
    return EXIT_OK
