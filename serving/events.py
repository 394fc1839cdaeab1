"""A spool of Label Studio webhook events: the service drops them, the loop drains them.

Files, one per event, written atomically: the webhook returns in milliseconds and no
event is lost if the loop is down.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["spool_event", "drain_events"]


def spool_event(events_dir: Path, payload: dict[str, Any]) -> Path:
    events_dir.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
    tmp = events_dir / f".{name}.tmp"
    tmp.write_text(json.dumps(payload))
    final = events_dir / name
    os.replace(tmp, final)
    return final


def drain_events(events_dir: Path) -> list[dict[str, Any]]:
    """Read and remove every spooled event, oldest first."""
    if not events_dir.is_dir():
        return []
    events = []
    for path in sorted(events_dir.glob("[0-9]*.json")):
        try:
            events.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            pass  # a torn file cannot exist (atomic rename); anything else is not ours
        path.unlink(missing_ok=True)
    return events
