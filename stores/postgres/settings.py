"""`database_url`: set, the job store is PostgreSQL; unset, SQLite in `data_dir` (the default)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, model_validator

from bot.config import Section
from bot.errors import ConfigError


class PostgresSettings(Section):
    """`database_url = "postgresql://user:password@host:5432/db"` (or `SDBOT_DATABASE_URL`).

    The URL may carry a password: it is kept out of reprs and its password out of logs.
    """

    database_url: str | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _check(self) -> PostgresSettings:
        url = self.database_url
        if url is not None and urlsplit(url).scheme not in ("postgresql", "postgres"):
            raise ConfigError(
                "database_url must be a postgresql:// URL (unset it to keep jobs in SQLite); "
                f"got {redact_url(url)!r}"
            )
        return self

    def secret_values(self) -> tuple[str, ...]:
        password = urlsplit(self.database_url).password if self.database_url else None
        return (*super().secret_values(), *((password,) if password else ()))


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***` (for `sdbot check`, logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
