"""A small HTTP client for the labelloop service (used by the loop to re-score the pool)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from serving.protocol import ImagePrediction

if TYPE_CHECKING:
    from kernel.settings import ServingSettings

__all__ = ["PredictionClient", "CLIENT_BATCH"]

#: The service's max_batch_size: one request never holds more images than one batch.
CLIENT_BATCH = 64
#: The service's counter of Label Studio task images it could not fetch or use (by reason).
FETCH_FAILURES_METRIC = "labelloop_image_fetch_failures"


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
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
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
        from prometheus_client.parser import text_string_to_metric_families

        try:
            response = self._http.get("/metrics", timeout=2.0)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        counts: dict[str, int] = {}
        for family in text_string_to_metric_families(response.text):
            if family.name != FETCH_FAILURES_METRIC:
                continue
            for sample in family.samples:
                if sample.name == f"{FETCH_FAILURES_METRIC}_total" and sample.value:
                    reason = sample.labels.get("reason", "")
                    counts[reason] = counts.get(reason, 0) + int(sample.value)
        return counts

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
