"""Pretraining on one process or many: the stage calls `run_pretraining`, which trains
in-process, or on several processes started by `torchrun` when the trainer config asks
for more than one device on this node.

Each worker process runs `python -m lm_tasks.training.launch <request.json>`: the
resolved config, the input and output folders and the MLflow run to log into. Lightning
reads the ranks torchrun sets; rank 0 logs and exports, every rank trains.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from lm_tasks.artifacts import read_json, write_json
from lm_tasks.config import LifecycleConfig, config_from_dict
from lm_tasks.training.distributed import world_size

log = logging.getLogger(__name__)

REQUEST, SUMMARY = "launch_request.json", "train_summary.json"


def run_pretraining(cfg: LifecycleConfig, tokens_dir: Path, tokenizer_path: Path, out_dir: Path,
                    tracking_uri: str, run_id: str) -> dict:
    """Train and return pretrain()'s summary; metrics go to the MLflow run `run_id`."""
    from lightning.pytorch.loggers import MLFlowLogger

    from lm_tasks.training.pretrain import pretrain

    processes = world_size(cfg.trainer)
    if processes == 1 or cfg.trainer.num_nodes > 1 or "LOCAL_RANK" in os.environ:
        # One process, or already one rank of a job launched by torchrun / SLURM.
        logger = MLFlowLogger(tracking_uri=tracking_uri, run_id=run_id)
        return pretrain(cfg, tokens_dir, tokenizer_path, out_dir, logger)
    request = out_dir / REQUEST
    write_json(request, {"config": asdict(cfg), "tokens_dir": str(tokens_dir), "tokenizer_path": str(tokenizer_path),
                         "out_dir": str(out_dir), "tracking_uri": tracking_uri, "run_id": run_id})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc-per-node={processes}", "-m", "lm_tasks.training.launch", str(request)]
    log.info("pretrain: %d processes: %s", processes, " ".join(command))
    result = subprocess.run(command)
    if result.returncode != 0:
        raise RuntimeError(f"Distributed pretraining failed (exit {result.returncode}); its log is above. "
                           f"Command: {' '.join(command)}")
    return read_json(out_dir / SUMMARY)


def main(request_path: str) -> None:
    from lightning.pytorch.loggers import MLFlowLogger

    from lm_tasks.training.pretrain import pretrain

    request = read_json(request_path)
    cfg = config_from_dict(request["config"])
    rank_zero = os.environ.get("RANK", "0") == "0"
    logger = MLFlowLogger(tracking_uri=request["tracking_uri"], run_id=request["run_id"]) if rank_zero else False
    summary = pretrain(cfg, request["tokens_dir"], request["tokenizer_path"], request["out_dir"], logger)
    if rank_zero:
        write_json(Path(request["out_dir"]) / SUMMARY, summary)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s [rank " + os.environ.get("RANK", "0")
                        + "] %(message)s")
    main(sys.argv[1])
