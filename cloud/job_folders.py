"""Job folders: how a backend that runs jobs itself (local, WebUI) keeps each one on disk.

A job has one folder under the backend's `state_dir`, named by its backend id; only ids the
backend made (uuid4) name folders, so nothing else reaches the file system. Files are written
whole or not at all: under a temporary name, then renamed over, so a crash, or another replica
reading a shared folder, sees all of a file or none. A job's output is its images and
`output.json` (infotext, caption, how many images). These functions do file I/O; the backends
run them in threads.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

from bot.model import JobOutput

if TYPE_CHECKING:
    from pathlib import Path

OUTPUT = "output.json"


def job_folder(state_dir: Path | None, backend_id: str) -> Path | None:
    """The folder of `backend_id`; None without a `state_dir` or for an id not a uuid."""
    if state_dir is None:
        return None
    try:
        uuid.UUID(backend_id)
    except ValueError:
        return None
    return state_dir / backend_id


def write_whole(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees all of it or none."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_text(text)
    temporary.replace(path)


def write_output(folder: Path, output: JobOutput, image_name: str) -> None:
    """Write a finished job's output (images named `image_name.format(n=…)`), unless its
    folder is gone (the job was cancelled or released meanwhile)."""
    if not folder.is_dir():
        return
    for n, image in enumerate(output.images):
        (folder / image_name.format(n=n)).write_bytes(image)
    meta = {"infotext": output.infotext, "caption": output.caption, "count": len(output.images)}
    write_whole(folder / OUTPUT, json.dumps(meta))


def read_output(folder: Path, image_name: str) -> JobOutput | None:
    """The output `write_output` wrote, or None when there is none yet.

    Raises `OSError`, `ValueError` or `KeyError` for a folder that does not read.
    """
    if not (folder / OUTPUT).exists():
        return None
    meta = json.loads((folder / OUTPUT).read_text())
    images = tuple(
        (folder / image_name.format(n=n)).read_bytes() for n in range(int(meta["count"]))
    )
    return JobOutput(images=images, infotext=meta["infotext"], caption=meta["caption"])
