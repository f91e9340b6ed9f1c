"""The ESD backend: jobs on SageMaker endpoints through ESD's REST API (v1.5 and later).

`EsdBackend` implements `bot.ports.Backend`; `EsdSettings` is its settings section and
`EsdConfig` its validated configuration (`EsdConfig.from_config`); `run_check` is `sdbot
check`. Wire formats stay in `cloud.esd.payloads`; the HTTP client, payload building,
launching, polling and interrogate each have their own module.
"""

from __future__ import annotations

from cloud.esd.backend import EsdBackend
from cloud.esd.check import check_backend, run_check
from cloud.esd.config import EsdConfig, EsdSettings
from cloud.esd.interrogate import Interrogator

__all__ = [
    "EsdBackend",
    "EsdConfig",
    "EsdSettings",
    "Interrogator",
    "check_backend",
    "run_check",
]
