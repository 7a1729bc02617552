"""The training logger: Lightning's MLFlowLogger, made to outlive a tracking server outage.

Metrics and params are sent by a background thread, in the order they were logged (one
request a second at most), each metric with its step and the time it was logged. While the
server is away (a transient error: lm_tasks.retry.is_transient) the batches wait in memory
and the thread tries again with backoff; the training loop never waits for the network.
At the end of training `finalize` waits for the last batches, up to the outage patience.
A batch the server refuses (a 4xx: a bug, not an outage) stops training at the next log
call, as Lightning's own logger would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from lm_tasks.retry import is_transient

log = logging.getLogger(__name__)

MAX_PENDING = 200_000  # batches kept while the server is away: ~4 days of a log line every step at 1 step/s
FIRST_DELAY_S, MAX_DELAY_S = 1.0, 15.0  # between tries of the sender, besides MLflow's own HTTP retries
SEND_INTERVAL_S = 1.0  # at most one request a second: little load on the server, whatever the step rate
FAILED_RUN_GRACE_S = 10.0  # a failed or interrupted training waits no longer than this for its last metrics
PARAMS_PER_BATCH, METRICS_PER_REQUEST = 100, 1000  # MLflow's log_batch limits


class OutageTolerantMLFlowLogger(MLFlowLogger):
    """Logs into the existing run `run_id` (the stage's) and never fails training because
    the tracking server is away. It does not end the run: the stage does."""

    def __init__(self, tracking_uri: str, run_id: str, patience_s: float):
        super().__init__(tracking_uri=tracking_uri, run_id=run_id)
        self._patience_s = patience_s
        self._pending: deque[dict] = deque()  # log_batch keyword arguments, oldest first
        self._changed = threading.Condition()  # guards _pending, _dropped, _refused
        self._dropped = 0
        self._refused: Exception | None = None
        self._sender: threading.Thread | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        # Lightning touches this when training starts: the run exists, no request is needed.
        return self._mlflow_client

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        now_ms = int(time.time() * 1000)
        self._send_later({"metrics": [Metric(key=k, value=float(v), timestamp=now_ms, step=step or 0)
                                      for k, v in metrics.items()]})

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        items = [Param(k, str(v)[:250]) for k, v in _flatten_dict(_convert_params(params)).items()]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self._send_later({"params": items[start:start + PARAMS_PER_BATCH]})

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Wait until every kept batch is sent: up to the outage patience after a successful
        training, a few seconds after a failed one (its own error matters more)."""
        patience_s = self._patience_s if status == "success" else min(self._patience_s, FAILED_RUN_GRACE_S)
        deadline = time.monotonic() + patience_s
        with self._changed:
            while self._pending and self._refused is None and time.monotonic() < deadline:
                self._changed.wait(timeout=max(0.0, deadline - time.monotonic()))
            unsent, dropped = len(self._pending), self._dropped
            self._pending.clear()
            self._dropped = 0
        if unsent and self._refused is None:
            log.error("MLflow run %s: %d metric/param batches not sent: the tracking server was still away "
                      "after %.1f min (tracking.outage_patience_minutes sets how long to wait)",
                      self._run_id, unsent, patience_s / 60)
        if dropped:
            log.error("MLflow run %s: the %d oldest metric/param batches were dropped: the tracking server "
                      "was away while more than %d waited", self._run_id, dropped, MAX_PENDING)
        if status == "success":
            self._raise_refusal()

    def _send_later(self, batch: dict) -> None:
        self._raise_refusal()
        with self._changed:
            if len(self._pending) == MAX_PENDING:  # bounded memory: the oldest goes first
                self._pending.popleft()
                self._dropped += 1
            self._pending.append(batch)
            self._changed.notify_all()
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_pending, name="mlflow-metrics", daemon=True)
            self._sender.start()

    def _raise_refusal(self) -> None:
        if self._refused is not None:
            raise RuntimeError(f"The MLflow server refused metrics of run {self._run_id}: "
                               f"{self._refused}") from self._refused

    def _send_pending(self) -> None:
        """The sender thread: the oldest batches first, tried again until the server takes them."""
        delay, away_since = FIRST_DELAY_S, None
        while True:
            with self._changed:
                while not self._pending:
                    self._changed.wait()
                batches = self._next_request()
            try:
                if "params" in batches[0]:
                    self._mlflow_client.log_batch(self._run_id, params=batches[0]["params"])
                else:
                    self._mlflow_client.log_batch(self._run_id, metrics=[m for b in batches for m in b["metrics"]])
            except Exception as err:
                if not is_transient(err):
                    with self._changed:
                        self._refused = err
                        self._changed.notify_all()
                    return
                if away_since is None:
                    away_since = time.monotonic()
                    log.warning("MLflow server unreachable (%s: %s); training goes on, its metrics are kept "
                                "in memory and sent when the server is back", type(err).__name__, err)
                time.sleep(delay)
                delay = min(2 * delay, MAX_DELAY_S)
                continue
            with self._changed:
                for batch in batches:
                    if self._pending and self._pending[0] is batch:  # not cleared by finalize meanwhile
                        self._pending.popleft()
                self._changed.notify_all()
            if away_since is not None:
                log.warning("MLflow server back after %.0f s; sending the %d kept batches",
                            time.monotonic() - away_since, len(self._pending))
                delay, away_since = FIRST_DELAY_S, None
            time.sleep(SEND_INTERVAL_S)  # what is logged meanwhile goes in the next request

    def _next_request(self) -> list[dict]:
        """The oldest kept batches that one log_batch request takes: a params batch alone, or
        consecutive metric batches (after an outage, thousands go in a few requests)."""
        batches, count = [], 0
        for batch in self._pending:
            if "params" in batch:
                return batches or [batch]
            count += len(batch["metrics"])
            if batches and count > METRICS_PER_REQUEST:
                break
            batches.append(batch)
        return batches
