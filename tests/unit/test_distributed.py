"""The batch plan: the global batch fixes the optimisation whatever the number of devices; the
FSDP strategy: what `trainer.fsdp_sharding` means in FSDP2, and what sharding does to a GPT."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule

from lm_tasks.config import ConfigError, load_config
from lm_tasks.models.gpt import GPT, GPTConfig
from lm_tasks.training.distributed import batch_plan, strategy, world_size
from lm_tasks.training.fsdp import FSDP2Strategy, ShardingPlan, mixed_precision, shard_gpt, sharding_plan


def trainer(*overrides):
    return load_config(list(overrides)).trainer


@pytest.mark.parametrize("devices,nodes,micro,expected", [
    (1, 1, None, (1, 64, 1)),
    (4, 1, None, (4, 16, 1)),
    (4, 2, None, (8, 8, 1)),
    (1, 1, 16, (1, 16, 4)),
    (2, 1, 16, (2, 16, 2)),
])
def test_micro_batch_and_accumulation_follow_from_the_global_batch(devices, nodes, micro, expected):
    t = trainer("trainer.global_batch_size=64", f"trainer.devices={devices}", f"trainer.num_nodes={nodes}",
                f"trainer.micro_batch_size={'null' if micro is None else micro}")
    plan = batch_plan(t)
    assert (plan.world_size, plan.micro_batch_size, plan.accumulate) == expected
    assert plan.world_size * plan.samples_per_step == 64  # the same sequences per optimizer step


def test_a_global_batch_the_devices_cannot_share_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"global_batch_size=30 is not a multiple of micro_batch_size x world size "
                                          r"\(7 x 4\)"):
        batch_plan(trainer("trainer.global_batch_size=30", "trainer.devices=4"))


def test_device_counts_and_strategies():
    assert world_size(trainer("trainer.devices=[0,1,2]", "trainer.num_nodes=2")) == 6
    assert world_size(trainer("trainer=ddp")) >= 1  # every visible GPU, or every core on a CPU-only machine
    assert strategy(trainer()) == "auto"
    fsdp = strategy(trainer("trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true",
                            "trainer.devices=2"))
    assert isinstance(fsdp, FSDP2Strategy)  # FSDP2 through ModelParallelStrategy: runs on CPU too
    assert (fsdp._data_parallel_size, fsdp._tensor_parallel_size) == (2, 1)
    assert fsdp._save_distributed_checkpoint is False  # one full checkpoint file, as every other run writes
    assert fsdp.plan == ShardingPlan((2,), ("shard",), reshard_after_forward=True)


@pytest.mark.parametrize("sharding,expected", [
    # every rank holds 1/8 of each parameter, gathered per block for forward, again for backward
    ("FULL_SHARD", ShardingPlan((8,), ("shard",), reshard_after_forward=True)),
    # gathered once per step: kept from forward to backward
    ("SHARD_GRAD_OP", ShardingPlan((8,), ("shard",), reshard_after_forward=False)),
    # sharded over the 4 GPUs of a node, replicated across the 2 nodes
    ("HYBRID_SHARD", ShardingPlan((2, 4), ("replicate", "shard"), reshard_after_forward=True)),
    # 8 full replicas (shards of one rank): DDP's memory and traffic
    ("NO_SHARD", ShardingPlan((8, 1), ("replicate", "shard"), reshard_after_forward=False)),
])
def test_fsdp_sharding_names_map_to_fsdp2_meshes(sharding, expected):
    assert sharding_plan(sharding, world=8, num_nodes=2) == expected
    t = trainer("trainer=fsdp", "trainer.devices=4", "trainer.num_nodes=2", f"trainer.fsdp_sharding={sharding}")
    assert FSDP2Strategy(t).plan == expected


def test_bf16_mixed_gathers_in_bf16_and_reduces_in_fp32():
    policy = mixed_precision("bf16-mixed")
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert (mixed_precision("32-true").param_dtype, mixed_precision("32-true").reduce_dtype) == (None, None)


@pytest.fixture
def world_of_one(tmp_path):
    """A gloo process group of this process alone, and its one-rank device mesh."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,), mesh_dim_names=("shard",))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("options", [{}, {"pos_encoding": "rotary", "norm": "rmsnorm", "activation": "swiglu",
                                           "qk_norm": True, "logit_softcap": 10.0}], ids=["textbook", "modern"])
def test_sharding_a_gpt_keeps_its_names_and_its_function(world_of_one, options):
    """Each block and the root become FSDP units, with activation checkpointing as hooks: the
    parameter names (checkpoint keys), the outputs and the gradients are the plain model's."""
    torch.manual_seed(0)
    plain = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16, **options))
    sharded, head = copy.deepcopy(plain), torch.nn.Linear(16, 3)
    shard_gpt(sharded, world_of_one, reshard_after_forward=True, mp_policy=mixed_precision("32-true"),
              activation_checkpointing=True, others=(head,))
    assert all(isinstance(m, FSDPModule) for m in [*sharded.blocks, sharded, head])
    assert sum(isinstance(m, FSDPModule) for m in sharded.modules()) == len(sharded.blocks) + 1  # a unit per Block
    assert list(sharded.state_dict()) == list(plain.state_dict())

    x = torch.randint(0, 50, (2, 8))
    (logits, loss), (expected_logits, expected_loss) = sharded(x, x), plain(x, x)
    assert torch.allclose(logits, expected_logits, atol=1e-6)
    loss.backward()
    expected_loss.backward()
    for (name, p), q in zip(sharded.named_parameters(), plain.parameters()):
        assert torch.allclose(p.grad.full_tensor(), q.grad, atol=1e-6), name
    # what a task head reads: the root's parameters are gathered for hidden_states too
    assert torch.allclose(sharded.hidden_states(x), plain.hidden_states(x), atol=1e-6)
