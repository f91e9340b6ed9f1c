"""Job stores on database servers, each behind the store ports of `bot.ports`.

The core never imports these; the composition root (`adapters.cli.make_store`) picks one.
`bot.store` (SQLite, the default) stays in the core: it needs no driver beyond the standard
library.
"""
