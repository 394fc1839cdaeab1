"""The labelloop service (BentoML). Importing this package does not import BentoML:
the service itself is `serving.service:Labelloop`."""

from serving.client import PredictionClient
from serving.events import drain_events, spool_event
from serving.guard import WEBHOOK_SECRET_HEADER
from serving.promotion import PromotionRecord, read_promotion, write_promotion
from serving.protocol import ImagePrediction

__all__ = [
    "WEBHOOK_SECRET_HEADER",
    "ImagePrediction",
    "PredictionClient",
    "PromotionRecord",
    "drain_events",
    "read_promotion",
    "spool_event",
    "write_promotion",
]
