"""Failed task-image fetches reach the operator: the client reads the service's counter from
its `/metrics` (the text BentoML's multiprocess registry writes), and `labelloop status` shows
it when it is not zero."""

from __future__ import annotations

from unittest import mock

import httpx
import pytest

from loop import cli
from loop.status import LoopStatus
from serving import PredictionClient

METRICS = """\
# HELP labelloop_image_fetch_failures_total Label Studio task images that could not be fetched or decoded
# TYPE labelloop_image_fetch_failures_total counter
labelloop_image_fetch_failures_total{reason="fetch"} 200.0
labelloop_image_fetch_failures_total{reason="outside_root"} 2.0
# HELP labelloop_predictions_total Images answered, by route, predicted class and model version
# TYPE labelloop_predictions_total counter
labelloop_predictions_total{label="3",model_version="digits:v1",route="predict"} 7.0
"""


def client_answering(handler) -> PredictionClient:
    client = PredictionClient("http://svc.test")
    client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handler))
    return client


def test_the_client_reads_the_failure_counter_by_reason():
    client = client_answering(lambda r: httpx.Response(200, text=METRICS) if r.url.path == "/metrics"
                              else httpx.Response(404))
    assert client.image_fetch_failures() == {"fetch": 200, "outside_root": 2}
    quiet = client_answering(lambda r: httpx.Response(200, text=METRICS.split("# HELP labelloop_predictions")[0]
                                                      .replace("200.0", "0.0").replace("2.0", "0.0")))
    assert quiet.image_fetch_failures() == {}


def test_no_service_means_no_count():
    def down(request):
        raise httpx.ConnectError("refused", request=request)

    assert client_answering(down).image_fetch_failures() is None
    assert client_answering(lambda r: httpx.Response(503)).image_fetch_failures() is None


def _status(**values) -> LoopStatus:
    return LoopStatus(workspace="/ws", data_commit="abcdef123456", label_batch=1, labels=3, labels_pending_training=0,
                      serving=None, service_version="digits:v1", runs=[], last_collect=None, **values)


@pytest.mark.parametrize("failures, shown", [
    ({"fetch": 200, "decode": 1}, "fetch failures 201 task images since the service started (decode 1, fetch 200)"),
    ({}, None),
])
def test_status_shows_fetch_failures_only_when_there_are_some(failures, shown, capsys):
    with mock.patch.object(cli, "Loop", autospec=True) as loop_cls:
        loop_cls.return_value.status.return_value = _status(image_fetch_failures=failures)
        assert cli.main(["status"]) == 0
        loop_cls.return_value.status.assert_called_once_with()
    out = " ".join(capsys.readouterr().out.split())
    if shown:
        assert shown in out and "log names each cause" in out
    else:
        assert "fetch failures" not in out
