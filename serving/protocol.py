"""The Label Studio ML-backend contract as typed models.

Field names are the JSON keys Label Studio 1.23 sends (see shared/reference).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kernel.errors import BadInputError


class UnprocessableError(BadInputError):
    """A Label Studio request that parses but cannot be served (no tasks, a labeling config
    the model does not fit, a webhook without an action): 422, as for a body of the wrong
    shape."""

    http_status = 422

__all__ = [
    "SetupRequest", "SetupResponse", "LSTask", "PredictRequest", "ChoiceResult",
    "TaskResult", "PredictResponse", "WebhookAccepted", "ImagePrediction", "ModelInfo",
    "UnprocessableError", "DriftStatus", "DRIFT_TESTS", "SOURCE_HEADER", "LOOP_SOURCE",
]

#: The loop's own requests to the client API (pool re-scoring, the gate) say so in this
#: header: they are neither captured nor counted as production traffic for drift.
SOURCE_HEADER = "X-Labelloop-Source"
LOOP_SOURCE = "loop"

#: The drift monitor's three comparisons (`serving.drift`), in the order they are reported.
DRIFT_TESTS = ("classes", "confidence", "embedding")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class SetupRequest(_Lenient):
    project: str = ""
    schema_: str = Field(default="", alias="schema")
    hostname: str = ""
    access_token: str = ""
    extra_params: dict[str, Any] | None = None


class SetupResponse(BaseModel):
    model_version: str


class LSTask(_Lenient):
    id: int
    data: dict[str, Any] = {}


class PredictRequest(_Lenient):
    tasks: list[LSTask]
    project: str = ""
    label_config: str = ""
    params: dict[str, Any] | None = None


class ChoiceResult(BaseModel):
    from_name: str
    to_name: str
    type: str = "choices"
    value: dict[str, list[str]]


class TaskResult(BaseModel):
    result: list[ChoiceResult]
    score: float
    model_version: str


class PredictResponse(BaseModel):
    results: list[TaskResult]


class WebhookAccepted(BaseModel):
    status: str = "queued"
    action: str
    event_id: str = Field(description="The spooled event; the loop handles it on its next tick")


class ImagePrediction(BaseModel):
    """What a client gets for one image."""

    label: str
    probabilities: dict[str, float]
    score: float = Field(description="Score of the configured strategy; lower = more useful to label")
    scores: dict[str, float] = Field(
        default_factory=dict, description="Every uncertainty strategy's score (lower = label first)"
    )
    strategy: str
    model_version: str
    embedding: list[float] | None = Field(
        default=None,
        description="The model's embedding layer: a backbone's pooled features, the small CNN's penultimate "
        "layer (only when asked: with_embeddings)",
    )


class DriftStatus(BaseModel):
    """The serving model's last drift check over recent client images (`serving.drift`)."""

    reference_images: int = Field(description="Images the model's reference holds (0: none, not judged)")
    window: int = Field(description="Client images in the window the last check compared")
    min_samples: int = Field(description="No verdict before the window holds this many")
    images_seen: int = 0
    detected: bool = False
    p_values: dict[str, float] = Field(default_factory=dict, description="classes, confidence, embedding")
    scores: dict[str, float] = Field(default_factory=dict, description="Cramér's V, KS D, largest KS D")
    checked_at: float | None = None


class ModelInfo(BaseModel):
    """What the model worker says about the model it serves."""

    version: str
    classes: list[str]
    metadata: dict
    drift: DriftStatus | None = None  # None: drift monitoring off, or the model has no reference
