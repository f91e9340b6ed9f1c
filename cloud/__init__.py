"""Backends: the implementations of `bot.ports.Backend` that run img2img and interrogate jobs.

`cloud.local` is the embedded in-process backend with its preview engine (no account needed);
the ESD REST client and the SageMaker interrogate path live beside it. Wire formats stay here and
are converted into `bot.model` dataclasses before the core sees them.
"""

from __future__ import annotations
