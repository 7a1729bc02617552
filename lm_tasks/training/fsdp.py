"""Fully sharded data parallel training with FSDP2 (`torch.distributed.fsdp.fully_shard`).

`trainer.strategy=fsdp` trains through Lightning's ModelParallelStrategy used as plain FSDP2:
every process a data-parallel rank, no tensor parallelism. Unlike Lightning's FSDPStrategy
(FSDP1) it runs on CPU too (gloo). The LightningModules shard their model in
`configure_model` (`shard_for`): one FSDP unit per Transformer `Block`, its parameters
gathered for that block's forward and backward only; embeddings, tied head and final norm
in the root unit; a task head a unit of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed._composable import checkpoint
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from lm_tasks.config import ConfigError, TrainerConfig
from lm_tasks.training.distributed import world_size


@dataclass(frozen=True)
class ShardingPlan:
    """How FSDP2 lays the ranks out and when it frees gathered parameters."""
    mesh_shape: tuple[int, ...]
    mesh_dims: tuple[str, ...]  # ("shard",), or ("replicate", "shard"): replicas of a sharded copy
    reshard_after_forward: bool  # free a block's gathered parameters after its forward (gather again for backward)


def sharding_plan(sharding: str, world: int, num_nodes: int) -> ShardingPlan:
    """`trainer.fsdp_sharding` (FSDP1's names, kept for the config) in FSDP2's terms."""
    if sharding == "FULL_SHARD":  # parameters, gradients and optimizer state sharded over every rank
        return ShardingPlan((world,), ("shard",), reshard_after_forward=True)
    if sharding == "SHARD_GRAD_OP":  # parameters stay gathered from forward to backward: less traffic, more memory
        return ShardingPlan((world,), ("shard",), reshard_after_forward=False)
    if sharding == "HYBRID_SHARD":  # sharded within a node, replicated across nodes (gradients all-reduced)
        return ShardingPlan((num_nodes, world // num_nodes), ("replicate", "shard"), reshard_after_forward=True)
    if sharding == "NO_SHARD":  # every rank a full replica: DDP's layout (shards of one rank each)
        return ShardingPlan((world, 1), ("replicate", "shard"), reshard_after_forward=False)
    raise ConfigError(f"trainer.fsdp_sharding={sharding!r}: expected FULL_SHARD, SHARD_GRAD_OP, NO_SHARD or "
                      "HYBRID_SHARD")


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy as plain FSDP2, with the sharding `trainer.fsdp_sharding` asks for.

    Checkpoints are one full file, gathered on rank 0 and written by the trainer's CheckpointIO
    (atomically), so `last.ckpt` resumes, and `best.ckpt` exports, like any other run's.
    """

    def __init__(self, t: TrainerConfig):
        world = world_size(t)
        super().__init__(data_parallel_size=world, tensor_parallel_size=1, save_distributed_checkpoint=False)
        self.plan = sharding_plan(t.fsdp_sharding, world, t.num_nodes)
        self.activation_checkpointing = t.activation_checkpointing

    def shard(self, model: nn.Module, *others: nn.Module) -> None:
        """Shard `model` (a GPT) and `others` (a task head) over this job's ranks."""
        mesh = init_device_mesh(self.root_device.type, self.plan.mesh_shape, mesh_dim_names=self.plan.mesh_dims)
        shard_gpt(model, mesh, self.plan.reshard_after_forward, mixed_precision(self.precision_plugin.precision),
                  self.activation_checkpointing, others)


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """bf16-mixed: gather and compute in bf16, reduce gradients in fp32; the fp32 shards stay the
    master weights, and Lightning's autocast stays on (softmax, norms and the loss in fp32).
    Otherwise the parameters' own dtype throughout."""
    if precision == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_gpt(model: nn.Module, mesh: DeviceMesh, reshard_after_forward: bool, mp_policy: MixedPrecisionPolicy,
              activation_checkpointing: bool = False, others: tuple[nn.Module, ...] = ()) -> None:
    """In place: each Transformer block an FSDP unit, then the rest of the GPT (embeddings, tied
    head, final norm) the root unit, then each of `others` a unit of its own."""
    options = dict(mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp_policy)
    for block in model.blocks:
        if activation_checkpointing:  # as hooks, before sharding: parameter names (checkpoints) stay the same
            checkpoint(block)
        fully_shard(block, **options)
    fully_shard(model, **options)
    # Task heads read `hidden_states`, not `forward`: gather the root's parameters for it too.
    register_fsdp_forward_method(model, "hidden_states")
    for other in others:
        fully_shard(other, **options)


def shard_for(module: L.LightningModule, model: nn.Module, *others: nn.Module) -> None:
    """For `configure_model`: shard the model when training with the FSDP strategy, else nothing."""
    if isinstance(module.trainer.strategy, FSDP2Strategy) and not isinstance(model, FSDPModule):
        module.trainer.strategy.shard(model, *others)
