"""Every prediction a Label Studio project holds, read back through the gateway's SDK
client in one listing (what the queue orders by, and what an annotator would see
pre-selected)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from labeling import LabelStudioGateway

__all__ = ["HeldPrediction", "predictions_by_task"]


@dataclass(frozen=True)
class HeldPrediction:
    model_version: str
    score: float | None
    pre_label: str | None  # the choice pre-selected for the annotator; None: a queue position only
    regions: int  # results in the prediction: 0 for a queue position only


def _choice(result: list) -> str | None:
    for region in result or []:
        choices = (region.get("value") or {}).get("choices") or []
        if choices:
            return str(choices[0])
    return None


def predictions_by_task(gateway: LabelStudioGateway, project: int) -> dict[int, list[HeldPrediction]]:
    held: dict[int, list[HeldPrediction]] = defaultdict(list)
    for p in gateway._read("list predictions", gateway._client.predictions.list, project=project):
        raw = p.model_dump()
        held[int(raw["task"])].append(HeldPrediction(
            model_version=str(raw.get("model_version") or ""),
            score=None if raw.get("score") is None else float(raw["score"]),
            pre_label=_choice(raw.get("result") or []),
            regions=len(raw.get("result") or []),
        ))
    return dict(held)
