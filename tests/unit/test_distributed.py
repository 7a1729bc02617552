"""The batch plan: the global batch fixes the optimisation whatever the number of devices."""

from __future__ import annotations

import pytest

from lm_tasks.config import ConfigError, load_config
from lm_tasks.training.distributed import batch_plan, strategy, world_size


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
    fsdp = strategy(trainer("trainer=fsdp"))
    assert type(fsdp).__name__ == "FSDPStrategy"
