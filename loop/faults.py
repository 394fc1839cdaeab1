"""Named crash points, for proving that a kill anywhere loses and duplicates nothing.

`LABELLOOP_FAULT_KILL_AT=<point>[,<point>...]` makes the process SIGKILL itself the first
time it reaches one of those points: no cleanup, no `finally`, exactly what an OOM kill or
a node loss does. `<point>=enospc` raises "No space left on device" there instead (a full
disk at that step). Unset (the default) a checkpoint costs one dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["FaultPoints", "COLLECT_POINTS"]

#: Every checkpoint on the collect path, in the order a collect reaches them.
COLLECT_POINTS = (
    "collect:begin",
    "events:read",
    "events:handled",
    "collect:events-done",
    "collect:discarded",
    "push:begin",
    "push:pushed",
    "push:recorded",
    "collect:cursor-read",
    "collect:tasks-fetched",
    "collect:rechecked",
    "collect:diffed",
    "collect:last-collect-saved",
    "commit:shard-written",
    "commit:cursor-written",
    "commit:dvc-added",
    "commit:git-added",
    "commit:committed",
    "collect:deletions-forgotten",
    "collect:pushed",
    "collect:end",
)


class FaultPoints:
    def __init__(self, spec: str = ""):
        self._armed: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in spec.split(","))):
            point, _, fault = item.partition("=")
            self._armed[point] = fault or "kill"

    def __call__(self, point: str) -> None:
        fault = self._armed.get(point)
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), point)
