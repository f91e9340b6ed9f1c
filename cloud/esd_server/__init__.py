"""The local backend served as an ESD-compatible REST API (`sdbot local-backend`).

It answers ESD's v1.5+ routes (`/prod/ping`, `/prod/inferences…`, `/prod/endpoints`,
`/prod/checkpoints`) with ESD's envelope, status codes and error shapes, hands out presigned-style
upload and download URLs on the same server that expire, runs jobs on the local preview engine
(`cloud.local.preview`) and injects faults (latency, 5xx, hangs, throttling, failed and stuck
jobs, endpoints not InService) so that the real ESD client can be exercised end to end.
"""

from __future__ import annotations

from cloud.esd_server.app import ServerURL, make_app, running_server, server_state
from cloud.esd_server.cli import main
from cloud.esd_server.config import EndpointSpec, Faults, ServerConfig
from cloud.esd_server.state import ServerState

__all__ = [
    "EndpointSpec",
    "Faults",
    "ServerConfig",
    "ServerState",
    "ServerURL",
    "main",
    "make_app",
    "running_server",
    "server_state",
]
