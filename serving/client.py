"""A small HTTP client for the labelloop service (used by the loop to re-score the pool)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from serving.protocol import DRIFT_TESTS, LOOP_SOURCE, SOURCE_HEADER, ImagePrediction

if TYPE_CHECKING:
    from kernel.settings import ServingSettings

__all__ = ["PredictionClient", "CLIENT_BATCH", "ProductionMetrics"]

#: The service's max_batch_size: one request never holds more images than one batch.
CLIENT_BATCH = 64
#: The service's counter of Label Studio task images it could not fetch or use (by reason).
FETCH_FAILURES_METRIC = "labelloop_image_fetch_failures"
#: The service's production capture counters (by reason) and drift gauges (`serving.telemetry`).
CAPTURE_COUNTERS = {"captured": "labelloop_captured", "skipped": "labelloop_capture_skipped",
                    "failed": "labelloop_capture_failures"}
DRIFT_GAUGES = ("labelloop_drift_p_value", "labelloop_drift_score", "labelloop_drift_detected",
                "labelloop_drift_window", "labelloop_drift_reference_images")


@dataclass(frozen=True)
class ProductionMetrics:
    """What the service's `/metrics` says about production since it started: captured client
    images, those chosen but not kept, capture failures (each by reason), and the serving
    model's last drift check (absent before its first one)."""

    captured: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    drift_reference_images: int | None = None  # None: no drift gauge yet (monitoring off, or no model)
    drift_window: int = 0
    drift_detected: bool = False
    drift_p_values: dict[str, float] = field(default_factory=dict)
    drift_scores: dict[str, float] = field(default_factory=dict)


class PredictionClient:
    """`api_key` for the client API, `basic_auth` for the Label Studio routes (`/health`),
    as the service is configured; `PredictionClient.for_settings` takes both from the
    serving settings (`settings.serving`)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        timeout_s: float = 60.0,
    ):
        self.url = url.rstrip("/")
        # The loop's requests are not production traffic: the service neither captures them
        # nor feeds them to its drift monitor.
        headers = {SOURCE_HEADER: LOOP_SOURCE}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._basic = httpx.BasicAuth(*basic_auth) if basic_auth else None
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)

    @classmethod
    def for_settings(cls, settings: "ServingSettings", **kwargs: object) -> "PredictionClient":
        """The service at `settings.url`, with the credentials it is configured with."""
        key = settings.api_key
        return cls(
            settings.url,
            api_key=key.get_secret_value() if key else None,
            basic_auth=settings.basic_auth,
            **kwargs,  # type: ignore[arg-type]
        )

    def health(self) -> dict | None:
        try:
            response = self._http.get("/health", timeout=2.0, auth=self._basic or httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def image_fetch_failures(self) -> dict[str, int] | None:
        """Task images the service could not fetch or use since it started, by reason
        (`fetch`, `decode`, `outside_root`; read from its `/metrics`, which needs no
        credentials); None when the service is not reachable."""
        families = self._metrics()
        return None if families is None else _counts_by_reason(families, FETCH_FAILURES_METRIC)

    def production_metrics(self) -> ProductionMetrics | None:
        """Capture counts and the last drift check from the service's `/metrics`; None when
        the service is not reachable."""
        families = self._metrics()
        if families is None:
            return None
        gauges: dict[str, dict[str, float]] = {name: {} for name in DRIFT_GAUGES}
        for family in families:
            if family.name in gauges:
                for sample in family.samples:
                    gauges[family.name][sample.labels.get("test", "")] = sample.value
        reference = gauges["labelloop_drift_reference_images"].get("")
        return ProductionMetrics(
            **{kind: _counts_by_reason(families, name) for kind, name in CAPTURE_COUNTERS.items()},
            drift_reference_images=int(reference) if reference is not None else None,
            drift_window=int(gauges["labelloop_drift_window"].get("", 0)),
            drift_detected=bool(gauges["labelloop_drift_detected"].get("", 0)),
            drift_p_values={t: v for t, v in gauges["labelloop_drift_p_value"].items() if t in DRIFT_TESTS},
            drift_scores={t: v for t, v in gauges["labelloop_drift_score"].items() if t in DRIFT_TESTS},
        )

    def _metrics(self) -> list | None:
        """The service's `/metrics` (needs no credentials), parsed; None when not reachable."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            response = self._http.get("/metrics", timeout=2.0)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return list(text_string_to_metric_families(response.text))

    def serving_version(self) -> str | None:
        health = self.health()
        return health.get("model_version") if health else None

    def wait_for_version(self, tag: str, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.serving_version() == tag:
                return True
            time.sleep(0.25)
        return False

    def classify_files(
        self, paths: Sequence[Path], *, on_batch: Callable[[int], None] | None = None,
        with_embeddings: bool = False,
    ) -> list[ImagePrediction]:
        out: list[ImagePrediction] = []
        for start in range(0, len(paths), CLIENT_BATCH):
            chunk = paths[start : start + CLIENT_BATCH]
            files = [("images", (p.name, p.read_bytes(), "image/png")) for p in chunk]
            data = {"with_embeddings": "true"} if with_embeddings else None
            response = self._http.post("/classify", files=files, data=data)
            response.raise_for_status()
            out += [ImagePrediction.model_validate(item) for item in response.json()]
            if on_batch:
                on_batch(len(chunk))
        return out

    def close(self) -> None:
        self._http.close()


def _counts_by_reason(families: list, name: str) -> dict[str, int]:
    """A counter's non-zero totals by its `reason` label (summed over other labels)."""
    counts: dict[str, int] = {}
    for family in families:
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_total" and sample.value:
                reason = sample.labels.get("reason", "")
                counts[reason] = counts.get(reason, 0) + int(sample.value)
    return counts
