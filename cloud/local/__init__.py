"""The local backend: an in-process `Backend` with ESD's job states and a preview engine.

It runs jobs with `cloud.local.preview`, a fast deterministic image transform that is *not* Stable
Diffusion, so the whole bot can be tried and tested on one machine without an account.
"""

from __future__ import annotations

from cloud.local.backend import LocalBackend, LocalBackendConfig, LocalSettings

__all__ = ["LocalBackend", "LocalBackendConfig", "LocalSettings"]
