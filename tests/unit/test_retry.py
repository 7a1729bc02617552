"""Which errors are retried: real exceptions from real clients (requests, urllib3, MLflow,
aiohttp) against a closed port, a socket that never answers and a small HTTP server
answering with a chosen status."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import pytest
import requests
import urllib3
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from prefect.states import Failed

from flows.common import retry_on_io
from lm_tasks.config import ConfigError, load_config
from lm_tasks.retry import is_transient, retry_transient


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raised(call) -> BaseException:
    try:
        call()
    except BaseException as err:  # noqa: BLE001 - the test looks at what any call raises
        return err
    raise AssertionError("expected an exception")


@pytest.fixture
def answering():
    """A local HTTP server answering every request with the status and JSON body given."""
    reply = {}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            body = json.dumps(reply["body"]).encode()
            self.send_response(reply["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def url_answering(status: int, body: dict) -> str:
        reply.update(status=status, body=body)
        return f"http://127.0.0.1:{server.server_port}"

    yield url_answering
    server.shutdown()
    server.server_close()


@pytest.fixture
def quick_mlflow(monkeypatch):
    """MLflow's client without its own retries, so each case fails in milliseconds."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


def test_network_errors_of_requests_urllib3_and_aiohttp_are_transient():
    url = f"http://127.0.0.1:{closed_port()}/"
    refused = raised(lambda: requests.get(url, timeout=2))
    assert isinstance(refused, requests.exceptions.ConnectionError) and is_transient(refused)
    assert is_transient(raised(lambda: urllib3.PoolManager().request("GET", url, retries=False)))  # NewConnectionError
    exhausted = raised(lambda: urllib3.PoolManager().request("GET", url, retries=0))
    assert isinstance(exhausted, urllib3.exceptions.MaxRetryError) and is_transient(exhausted)
    assert is_transient(raised(lambda: socket.create_connection(("127.0.0.1", closed_port()))))  # builtin

    async def fetch():
        async with aiohttp.ClientSession() as session:
            await session.get(url)
    assert is_transient(raised(lambda: asyncio.run(fetch())))

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        timeout = raised(lambda: requests.get(f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout=0.2))
    assert isinstance(timeout, requests.exceptions.Timeout) and is_transient(timeout)


def test_mlflow_server_errors_and_rate_limits_are_transient_refusals_are_not(answering, quick_mlflow):
    def get_run_from(status: int, error_code: str) -> MlflowException:
        url = answering(status, {"error_code": error_code, "message": "from the test server"})
        return raised(lambda: MlflowClient(url).get_run("0" * 32))

    assert is_transient(get_run_from(503, "TEMPORARILY_UNAVAILABLE"))
    assert is_transient(get_run_from(500, "INTERNAL_ERROR"))  # a database failover behind the server
    assert is_transient(get_run_from(429, "REQUEST_LIMIT_EXCEEDED"))
    for status, code in ((400, "INVALID_PARAMETER_VALUE"), (404, "RESOURCE_DOES_NOT_EXIST"),
                         (403, "PERMISSION_DENIED"), (401, "UNAUTHENTICATED")):
        refusal = get_run_from(status, code)
        assert isinstance(refusal, MlflowException) and not is_transient(refusal), (status, refusal)
    status_503 = get_run_from(503, "TEMPORARILY_UNAVAILABLE")
    # The client's own retries ran out: MLflow wraps the requests error in a plain MlflowException.
    assert type(status_503) is MlflowException and "503" in str(status_503)


def test_an_unreachable_mlflow_server_is_transient(quick_mlflow):
    down = raised(lambda: MlflowClient(f"http://127.0.0.1:{closed_port()}").get_run("0" * 32))
    assert isinstance(down, MlflowException) and is_transient(down)


def test_configuration_certificate_and_local_errors_are_not_transient(answering, tmp_path):
    # TLS spoken to a plain HTTP server: a certificate/protocol problem, not an outage.
    tls = raised(lambda: requests.get(answering(200, {}).replace("http:", "https:"), timeout=2))
    assert isinstance(tls, requests.exceptions.SSLError) and not is_transient(tls)
    # MLflow's plain MlflowException (code INTERNAL_ERROR, i.e. 500) for a local problem.
    no_store = raised(lambda: get_artifact_repository("nosuchscheme://bucket/x"))
    assert isinstance(no_store, MlflowException) and not is_transient(no_store)
    assert not is_transient(raised(lambda: load_config(["trainer=nosuchtrainer"])))
    assert isinstance(raised(lambda: load_config(["trainer=nosuchtrainer"])), ConfigError)
    assert not is_transient(raised(lambda: open(tmp_path / "missing.txt")))
    assert not is_transient(raised(lambda: int("x")))


def test_prefect_retries_a_stage_on_transient_errors_only(quick_mlflow):
    down = raised(lambda: MlflowClient(f"http://127.0.0.1:{closed_port()}").get_run("0" * 32))
    assert retry_on_io(None, None, Failed(data=down))
    assert retry_on_io(None, None, Failed(data=raised(lambda: requests.get(f"http://127.0.0.1:{closed_port()}"))))
    assert not retry_on_io(None, None, Failed(data=raised(lambda: load_config(["trainer=nosuchtrainer"]))))
    assert not retry_on_io(None, None, Failed(data=MlflowException.invalid_parameter_value("bad metric name")))


def test_retry_transient_waits_for_the_service_and_gives_up_after_its_patience():
    port = closed_port()
    listener = socket.socket()
    calls = []

    def connect():
        calls.append(time.monotonic())
        if len(calls) == 3:  # the service comes back before the third try
            listener.bind(("127.0.0.1", port))
            listener.listen()
        return socket.create_connection(("127.0.0.1", port), timeout=2)

    try:
        retry_transient(connect, "connecting", patience_s=10, first_delay_s=0.05).close()
    finally:
        listener.close()
    assert len(calls) == 3 and calls[2] - calls[1] >= 0.1  # the delay doubled

    def refused():
        calls.append(time.monotonic())
        return socket.create_connection(("127.0.0.1", closed_port()), timeout=2)

    calls.clear()
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        retry_transient(refused, "connecting", patience_s=0.5, first_delay_s=0.05)
    assert 0.3 < time.monotonic() - started < 2 and len(calls) >= 3

    calls.clear()
    with pytest.raises(ConfigError):  # not retried
        retry_transient(lambda: (calls.append(0), load_config(["trainer=nosuchtrainer"])), "loading", 10)
    assert len(calls) == 1
