"""Everything that talks to Label Studio, through label-studio-sdk."""

from labeling.gateway import (
    Annotation,
    LabelStudioGateway,
    Task,
    TaskPrediction,
    classes_from_config,
    label_config,
)

__all__ = [
    "Annotation",
    "LabelStudioGateway",
    "Task",
    "TaskPrediction",
    "classes_from_config",
    "label_config",
]
