"""Which errors are worth retrying, and retrying them with backoff.

Transient: a service briefly away or overloaded (a tracking server restarting, a database
failover, a storage endpoint timing out): a refused or dropped connection, a timeout, a
server error (5xx), a rate limit (429). Not transient: a refused request (4xx), a
certificate problem, a configuration error, a bug; retrying those only delays the error.
One rule for Prefect's stage retries, the tracked run's closing calls and the training
logger's sends.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Callable, TypeVar

import requests
import urllib3
from mlflow.exceptions import MlflowException, RestException

log = logging.getLogger(__name__)

# A certificate or TLS problem does not go away by waiting (some of these subclass the
# connection errors below).
_NEVER = [ssl.SSLError, requests.exceptions.SSLError, urllib3.exceptions.SSLError]
_NETWORK = [ConnectionError, TimeoutError,  # built-in: refused, reset, timed out
            requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.RetryError,  # the client's own retries on 5xx/429 ran out
            urllib3.exceptions.ProtocolError, urllib3.exceptions.TimeoutError,  # incl. NewConnectionError
            urllib3.exceptions.ResponseError]
_STATUS_ERRORS: list[tuple[type, Callable[[BaseException], int | None]]] = [
    (requests.exceptions.HTTPError, lambda e: getattr(e.response, "status_code", None))]

# fsspec's storage clients, where installed: aiohttp (http, gcs, azure) and botocore (s3).
try:
    import aiohttp
except ImportError:
    pass
else:
    _NEVER.append(aiohttp.ClientSSLError)
    _NETWORK += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    _STATUS_ERRORS.append((aiohttp.ClientResponseError, lambda e: e.status))
try:
    import botocore.exceptions as boto
except ImportError:
    pass
else:  # botocore's SSLError is a requests SSLError: refused above
    _NETWORK += [boto.ConnectionError, boto.HTTPClientError]
    _STATUS_ERRORS.append((boto.ClientError, lambda e: e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")))

NEVER_ERRORS, NETWORK_ERRORS = tuple(_NEVER), tuple(_NETWORK)

# MLflow's error codes for "try again later" (a server's answer, or MLflow's name for a
# 503/504/429 status without a JSON body).
TRANSIENT_MLFLOW_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED",
                                    "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"})


def is_transient(err: BaseException) -> bool:
    """True for an error that may go away by itself (see the module's docstring)."""
    if isinstance(err, NEVER_ERRORS):
        return False
    if isinstance(err, MlflowException):
        return _mlflow_transient(err)
    if isinstance(err, urllib3.exceptions.MaxRetryError):
        return err.reason is None or is_transient(err.reason)
    for kind, status_of in _STATUS_ERRORS:
        if isinstance(err, kind):
            return _transient_status(status_of(err))
    return isinstance(err, NETWORK_ERRORS)


def _mlflow_transient(err: MlflowException) -> bool:
    if err.error_code in TRANSIENT_MLFLOW_CODES:
        return True
    if isinstance(err, RestException):  # the server answered with an error
        return _transient_status(err.get_http_status_code())
    # MLflow reports a failed request as a plain MlflowException raised while handling the
    # network error. A plain one without such a cause (code INTERNAL_ERROR, i.e. 500, by
    # default) is a local problem, e.g. an artifact URI scheme with no store: not retried.
    cause = err.__cause__ or err.__context__
    return cause is not None and is_transient(cause)


def _transient_status(status: int | None) -> bool:
    return status is not None and (status >= 500 and status != 501 or status in (408, 429))  # 501: not implemented


T = TypeVar("T")


def retry_transient(call: Callable[[], T], what: str, patience_s: float,
                    first_delay_s: float = 1.0, max_delay_s: float = 60.0) -> T:
    """`call()`, called again after transient errors with a doubling delay (at most
    `max_delay_s`) for up to `patience_s` seconds; any other error, or the last transient one,
    is raised."""
    deadline = time.monotonic() + patience_s
    delay = first_delay_s
    while True:
        try:
            return call()
        except Exception as err:
            if not is_transient(err) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s failed (%s: %s); retrying in %.0f s, for up to %.0f min in all",
                        what, type(err).__name__, err, delay, patience_s / 60)
            time.sleep(delay)
            delay = min(2 * delay, max_delay_s)
