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
from collections.abc import Callable
from typing import Any

from kernel.storage import storage_fs

__all__ = ["spool_event", "drain_events"]

EventHandler = Callable[[dict[str, Any]], None]


def spool_event(events_dir: Path | str, payload: dict[str, Any]) -> str:
    """Store one event; returns its id (names sort by arrival)."""
    event_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    text = json.dumps(payload)
    if remote := storage_fs(events_dir):
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


def drain_events(events_dir: Path | str, handle: EventHandler | None = None) -> list[dict[str, Any]]:
    """Hand every spooled event to `handle`, oldest first, and remove it only AFTER it was
    handled: a crash in between hands it over again (handlers must be idempotent), never
    loses it. Returns the events."""
    handled: list[dict[str, Any]] = []

    def one(read, remove) -> None:
        try:
            event = json.loads(read())
        except (OSError, json.JSONDecodeError):
            remove()  # a torn file cannot exist (atomic writes); anything else is not ours
            return
        if handle is not None:
            handle(event)
        remove()
        handled.append(event)

    if remote := storage_fs(events_dir):
        fs, root = remote
        if not fs.exists(root):
            return []
        for name in sorted(p for p in fs.ls(root, detail=False) if p.rsplit("/", 1)[-1][:1].isdigit()):
            one(lambda name=name: fs.cat_file(name).decode(), lambda name=name: fs.rm(name))
        return handled
    folder = Path(events_dir)
    if not folder.is_dir():
        return []
    for path in sorted(folder.glob("[0-9]*.json")):
        one(path.read_text, lambda path=path: path.unlink(missing_ok=True))
    return handled
