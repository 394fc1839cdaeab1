"""The loop: collect -> commit -> retrain -> promote -> re-score, and the CLI.

The top of the import graph: it uses labeling/, serving/, pipelines/ and kernel/; none of
them imports it."""

from loop.collection import CollectResult
from loop.core import Loop
from loop.status import LoopStatus

__all__ = ["CollectResult", "Loop", "LoopStatus"]
