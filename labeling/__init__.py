"""Everything that talks to Label Studio, through label-studio-sdk."""

from labeling.gateway import (
    Annotation,
    LabelStudioGateway,
    S3StorageCredentials,
    Task,
    TaskPrediction,
    classes_from_config,
    label_config,
)
from labeling.simulated import QueueSettings, ReviewState, SimulatedAnnotator

__all__ = [
    "Annotation",
    "LabelStudioGateway",
    "QueueSettings",
    "S3StorageCredentials",
    "ReviewState",
    "SimulatedAnnotator",
    "Task",
    "TaskPrediction",
    "classes_from_config",
    "label_config",
]
