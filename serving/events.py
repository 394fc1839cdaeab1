"""A spool of Label Studio webhook events: the service drops them, the loop drains them.

One file per event, written atomically: the webhook returns in milliseconds and no event is
lost if the loop is down. On one machine the spool is a directory; on Kubernetes (service
and scheduler in different pods) it is a folder in shared storage (any fsspec URL).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["spool_event", "drain_events"]


def _remote(location: Path | str):
    if isinstance(location, str) and "://" in location:
        import fsspec

        return fsspec.core.url_to_fs(location)
    return None


def spool_event(events_dir: Path | str, payload: dict[str, Any]) -> str:
    """Store one event; returns its id (names sort by arrival)."""
    event_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    text = json.dumps(payload)
    if remote := _remote(events_dir):
        fs, root = remote
        fs.makedirs(root, exist_ok=True)  # a no-op on object stores
        with fs.open(f"{root}/{event_id}.json", "w") as out:  # one PUT: atomic on object stores
            out.write(text)
        return event_id
    folder = Path(events_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{event_id}.tmp"
    tmp.write_text(text)
    os.replace(tmp, folder / f"{event_id}.json")
    return event_id


def drain_events(events_dir: Path | str) -> list[dict[str, Any]]:
    """Read and remove every spooled event, oldest first."""
    if remote := _remote(events_dir):
        fs, root = remote
        if not fs.exists(root):
            return []
        names = sorted(p for p in fs.ls(root, detail=False) if p.rsplit("/", 1)[-1][:1].isdigit())
        events = []
        for name in names:
            try:
                with fs.open(name, "r") as src:
                    events.append(json.loads(src.read()))
            except (OSError, json.JSONDecodeError):
                pass
            fs.rm(name)
        return events
    folder = Path(events_dir)
    if not folder.is_dir():
        return []
    events = []
    for path in sorted(folder.glob("[0-9]*.json")):
        try:
            events.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            pass  # a torn file cannot exist (atomic rename); anything else is not ours
        path.unlink(missing_ok=True)
    return events
