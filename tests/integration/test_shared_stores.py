"""A team's stores: one cache store used from two tracking stores. (A tracking server's
artifact store: test_tracking_server.py.)"""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.lifecycle import lifecycle
from lm_tasks.promotion import PromotionError

pytestmark = pytest.mark.slow

MODEL = "lm-lifecycle-lm"


def lifecycle_run(tracking_uri: str):
    """The client, the experiment and the newest lifecycle run of a tracking store."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("lm-lifecycle")
    parents = client.search_runs([experiment.experiment_id], "tags.stage = 'lifecycle'",
                                 order_by=["attributes.start_time DESC"])
    return client, experiment, parents[0]


def test_a_lifecycle_cached_from_another_tracking_store_still_registers_and_promotes(prefect_harness, tmp_path):
    # One cache store (under root_dir), two tracking stores.
    common = ["debug=smoke", f"paths.root_dir={tmp_path}"]
    store_a, store_b = f"sqlite:///{tmp_path}/a/mlflow.db", f"sqlite:///{tmp_path}/b/mlflow.db"
    first = lifecycle(overrides=common + [f"tracking.tracking_uri={store_a}"])
    second = lifecycle(overrides=common + [f"tracking.tracking_uri={store_b}"])
    assert all(stage["cached"] for stage in second.values())

    client, _, parent = lifecycle_run(store_b)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    for stage in first:  # every stage's producing run is in store A, and the tags say so
        assert tags[f"stage.{stage}.run_id"] == first[stage]["run_id"]
        assert tags[f"stage.{stage}.tracking"] == "other-store"
    assert tags["promotion.decision"] == "promoted"
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == parent.info.run_id  # the model was logged again into this store
    assert champion.tags["model_digest"] == first["pretrain"]["digest"]
    generated = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(["def"], params={"max_new_tokens": 2})
    assert list(generated.columns) == ["prompt", "generation"]

    _, _, parent_a = lifecycle_run(store_a)  # in its own store, the first lifecycle's runs are here
    assert parent_a.data.tags["stage.pretrain.tracking"] == "this-store"

    # A registry error (the registry refuses the reserved alias name) stops the promotion
    # visibly: the lifecycle fails, its run says why, no alias moves.
    with pytest.raises(PromotionError, match="registry error, 'latest' not moved: .*reserved"):
        lifecycle(overrides=common + [f"tracking.tracking_uri={store_b}", "promotion.alias=latest"])
    client, _, failed = lifecycle_run(store_b)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["promotion.decision"] == "error" and "reserved" in failed.data.tags["promotion.reason"]
    assert set(client.get_registered_model(MODEL).aliases) == {"champion"}
