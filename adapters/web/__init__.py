"""Operators' web side: Prometheus metrics, health checks and the `/admin` page."""
