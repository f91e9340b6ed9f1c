"""The WebUI backend: jobs on an AUTOMATIC1111 / Forge WebUI started with `--api`.

`A1111Backend` implements `bot.ports.Backend`; `A1111Config` holds its settings (built with
`A1111Config.from_config`); `check_webui` is `sdbot check` for it. The HTTP side, with its
error translation, is `cloud.a1111.client`.
"""

from __future__ import annotations

from cloud.a1111.backend import A1111Backend, A1111Config, A1111Settings
from cloud.a1111.check import check_webui

__all__ = ["A1111Backend", "A1111Config", "A1111Settings", "check_webui"]
