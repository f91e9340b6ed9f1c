"""HTTP mechanisms shared by the chat adapters and the backends (aiohttp, so not in `bot/`).

`transport.download` is the one size-capped download of sdbot: Discord's CDN, Slack's file
hosts, ESD's presigned storage URLs, and the capped reading of API answers (ESD, the WebUI).
It sits between `adapters | cloud` and `bot` in the layers (pyproject `[tool.importlinter]`):
it may use the core's pure helpers (`bot.retry`) and knows no platform or backend.
"""
