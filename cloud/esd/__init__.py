"""The ESD backend: jobs on SageMaker endpoints through ESD's REST API (v1.5 and later).

`EsdBackend` implements `bot.ports.Backend`; `EsdSettings` is its settings section and
`EsdConfig` its validated configuration (`EsdConfig.from_config`); `run_check` is `sdbot
check`. Wire formats stay in `cloud.esd.payloads`; the HTTP client, payload building,
launching, polling and interrogate each have their own module.

aiohttp's client and boto3 are imported when the backend is first used, not when the
composition root reads `EsdSettings` for every run: a bot on another backend never loads them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from cloud.esd.config import EsdConfig, EsdSettings

if TYPE_CHECKING:
    from cloud.esd.backend import EsdBackend
    from cloud.esd.check import check_backend, run_check
    from cloud.esd.interrogate import Interrogator

_MODULES = {
    "EsdBackend": "cloud.esd.backend",
    "check_backend": "cloud.esd.check",
    "run_check": "cloud.esd.check",
    "Interrogator": "cloud.esd.interrogate",
}

__all__ = [
    "EsdBackend",
    "EsdConfig",
    "EsdSettings",
    "Interrogator",
    "check_backend",
    "run_check",
]


def __getattr__(name: str) -> object:
    """The backend's names, each from its module on first use (PEP 562)."""
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name]), name)
