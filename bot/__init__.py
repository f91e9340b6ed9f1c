"""sdbot's platform-neutral core.

The core owns the life of a job (accept, validate, submit, poll, deliver), the job store, the
image pipeline and the contracts that adapters (`adapters/`) and backends (`cloud/`) implement.
It never imports a chat platform or cloud library; `tests/test_import_boundary.py` enforces that.
"""
