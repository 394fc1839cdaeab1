"""The ML pipeline as DVC stages: prepare -> train -> evaluate -> register.

Importing this package is cheap (no TensorFlow): stages import Keras when they run.
"""

from pipelines.images import decode_image, preprocess
from pipelines.labels import LabelEvent, current_annotations, labels_by_image, read_events, write_shard
from pipelines.params import Params, load_params
from pipelines.strategies import QueryStrategy, get_strategy

__all__ = [
    "LabelEvent",
    "Params",
    "QueryStrategy",
    "current_annotations",
    "decode_image",
    "get_strategy",
    "labels_by_image",
    "load_params",
    "preprocess",
    "read_events",
    "write_shard",
]
