"""Beside a pretraining with `eval.checkpoints.enabled`: its snapshots published and evaluated.

`beside_training` wraps the training call in the pretraining stage. While training runs, a
thread of the stage's process publishes each new snapshot (a `snapshot/<digest>` cache
entry, then a Prefect event through the flows' subscriber: lm_tasks.checkpoint_eval) and
logs each evaluation into the pretraining's MLflow run as it appears. With
`eval.checkpoints.evaluator=local` an evaluator process scores the snapshots; with
`deployment` the `evaluate-checkpoint` deployment does, on a worker, triggered by the events.

Training never waits on an evaluator or fails with one. When it has ended, in local mode,
what the evaluator did not score is scored here (`checkpoint_eval.catch_up`); the stage's
entry lists every snapshot (`snapshots.json`) for a later run to catch up the rest.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from lm_tasks import checkpoint_eval
from lm_tasks.artifacts import write_json
from lm_tasks.cache import StageCache
from lm_tasks.checkpoint_eval import Settings

log = logging.getLogger(__name__)

# How the local evaluator is started (a test may start a failing one instead).
EVALUATOR = [sys.executable, "-m", "lm_tasks.checkpoint_eval"]
EVALUATOR_GRACE_S = 600  # how long a finished training waits for the evaluator's last snapshot
POLL_S = 1.0


@contextmanager
def beside_training(cfg, staging: Path, tokens, pretrain_key: str, run_id: str, out: Path) -> Iterator[None]:
    """Publish and evaluate the snapshots that training writes into `staging` (see the module
    docstring). `tokens` is the tokenizer stage's StageResult; `out` the stage's work folder,
    which gets `snapshots.json` and `evaluator.log`."""
    cache, settings = StageCache(cfg.cache), Settings.of(cfg)
    tokens_dir = Path(tokens.output_dir)
    staging.mkdir(parents=True, exist_ok=True)
    (staging / checkpoint_eval.DONE).unlink(missing_ok=True)  # a resumed run trains again
    announcement = {"run_id": run_id, "tokens_key": tokens.key, "pretrain_key": pretrain_key,
                    "evaluator": cfg.eval.checkpoints.evaluator}
    evaluator = _start_evaluator(cfg, staging, tokens, settings, out) if cfg.eval.checkpoints.evaluator == "local" \
        else None
    published: dict[int, str] = {}
    logged = checkpoint_eval.logged_steps(run_id)  # a resumed run logged some already
    trained = threading.Event()

    def follow() -> None:
        """Publish new snapshots; log new evaluations. In this process, which has MLflow and
        the flow's Prefect context (the evaluator has neither)."""
        for snapshot in checkpoint_eval.snapshots(staging):
            if snapshot.step not in published:
                checkpoint_eval.publish(cache, snapshot, announcement)
                published[snapshot.step] = snapshot.digest
        for step, digest in published.items():
            if step not in logged:
                result = checkpoint_eval.cached_evaluation(cache, digest, tokens.digest, settings)
                if result is not None:
                    checkpoint_eval.log_result(run_id, {**result, "step": step})
                    logged.add(step)

    def keep_following() -> None:
        while not trained.wait(POLL_S):
            try:
                follow()
            except Exception as err:  # a tracking or store hiccup: what is left is done at the end
                log.debug("checkpoints not published or logged yet: %s", err)

    follower = threading.Thread(target=contextvars.copy_context().run, args=(keep_following,), daemon=True)
    follower.start()
    try:
        yield
    except BaseException:
        if evaluator is not None:
            evaluator.kill()  # the training failed or was interrupted: end now, not after the evaluations
        raise
    finally:
        trained.set()
        follower.join()
        (staging / checkpoint_eval.DONE).touch()
    if evaluator is not None:
        _wait(evaluator, out / "evaluator.log")
    try:
        follow()  # the last snapshots
    except Exception as err:  # the training's result stands; its snapshots stay in `staging`
        log.warning("checkpoints not all published (%s: %s); the pretraining result stands", type(err).__name__, err)
        return
    finally:
        write_json(out / checkpoint_eval.LISTING, [{"step": s, "digest": d} for s, d in sorted(published.items())])
    shutil.rmtree(staging, ignore_errors=True)  # every snapshot is a cache entry now
    if evaluator is None:
        log.info("pretrain: %d checkpoint(s) announced for the evaluate-checkpoint deployment", len(published))
        return
    try:
        listed = checkpoint_eval.listing(out)
        caught_up = checkpoint_eval.catch_up(cache, listed, tokens_dir, tokens.digest, settings, run_id)
    except Exception as err:  # the training's result stands without its checkpoint curve
        log.warning("checkpoint evaluation failed (%s: %s); the pretraining result stands", type(err).__name__, err)
        return
    log.info("pretrain: %d checkpoint(s) evaluated (%d after training, here)", len(listed), caught_up)


def _start_evaluator(cfg, staging: Path, tokens, settings: Settings, out: Path) -> subprocess.Popen:
    """The local evaluator: its own thread budget, the lowest priority (training goes first)."""
    threads = str(cfg.eval.checkpoints.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    command = [*EVALUATOR, "--snapshots", str(staging), "--tokens", str(tokens.output_dir),
               "--tokens-digest", tokens.digest, "--settings", json.dumps(asdict(settings)),
               "--cache", json.dumps(asdict(cfg.cache)), "--threads", threads]
    with open(out / "evaluator.log", "ab") as log_file:
        return subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: os.nice(19))


def _wait(evaluator: subprocess.Popen, log_path: Path) -> None:
    try:
        evaluator.wait(timeout=EVALUATOR_GRACE_S)
    except subprocess.TimeoutExpired:
        evaluator.kill()
        evaluator.wait()
    if evaluator.returncode != 0:
        log.warning("checkpoint evaluator ended with %s (log: %s); scoring what it left here",
                    evaluator.returncode, log_path)
