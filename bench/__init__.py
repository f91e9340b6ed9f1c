"""sdbot's benchmark harness: `python -m bench` runs every benchmark and writes its figures to
`docs/benchmarks.md`. Timing lives here, never in test assertions."""
