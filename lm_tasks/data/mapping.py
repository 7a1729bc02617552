"""Where the data stage's per-row work runs: this machine's processes, or a Dask cluster.

Every per-row pass of the data stage (cleaning, hashing, MinHash signatures, the
decontamination check, tokenising) is one batched function applied with a mapper:

    mapper(ds, fn, fn_kwargs=..., desc=..., remove_columns=..., features=...) -> Dataset

- `LocalMap(num_proc)`: `Dataset.map` here, in `num_proc` processes (`data.num_proc`).
- `DaskMap(client, partitions, folder)`: `ds` cut into contiguous row ranges, each mapped
  by a Dask worker into its own Arrow file under `folder`, concatenated in order. Local
  files are read the same way, one file per partition (`DaskMap.each`).

The function sees the same rows either way and a row's result depends on the row alone,
so the output is the same whatever the number of partitions or workers. What looks
across rows (which rows are duplicates, the validation split, the shards) stays in the
data stage's own process, computed from compact columns (a hash per row, one LSH band
at a time). `folder` must be readable by every worker and the stage: the stage's scratch
folder, on a shared filesystem for a cluster of several machines.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from datasets import Dataset, concatenate_datasets

log = logging.getLogger(__name__)


class LocalMap:
    """`Dataset.map` in this process, or in `num_proc` processes."""

    def __init__(self, num_proc: int = 1):
        self.num_proc = num_proc if num_proc > 1 else None

    def __call__(self, ds: Dataset, fn, fn_kwargs: dict, desc: str, **options) -> Dataset:
        return ds.map(fn, batched=True, num_proc=self.num_proc, fn_kwargs=fn_kwargs, desc=desc, **options)


class DaskMap:
    """The same map, partitioned over the workers of a Dask cluster."""

    def __init__(self, client, partitions: int, folder: str | Path):
        self.client, self.partitions, self.folder = client, max(1, partitions), Path(folder)

    def __call__(self, ds: Dataset, fn, fn_kwargs: dict, desc: str, **options) -> Dataset:
        if len(ds) == 0:  # nothing to spread; the empty result keeps the columns and types
            return ds.map(fn, batched=True, fn_kwargs=fn_kwargs, desc=desc, **options)
        options.pop("cache_file_name", None)  # each partition names its own file
        self.folder.mkdir(parents=True, exist_ok=True)
        count = min(self.partitions, len(ds))
        bounds = [len(ds) * i // count for i in range(count + 1)]
        # sent once per worker, not per part; its own key (hash=False): identical arguments scattered by
        # an earlier pass may be being released just now
        shared = self.client.scatter([fn_kwargs], broadcast=True, hash=False)[0]
        tag = f"{desc.replace(' ', '_')}-{uuid.uuid4().hex[:8]}"
        futures = [self.client.submit(map_partition, ds.select(range(start, end)), fn, shared, desc, options,
                                      str(self.folder / f"{tag}-{i:05d}.arrow"), pure=False)
                   for i, (start, end) in enumerate(zip(bounds, bounds[1:]))]
        parts = self.client.gather(futures)
        log.info("%s: %d rows in %d partitions on %d Dask workers", desc, len(ds), count,
                 len(self.client.scheduler_info().get("workers", {})))
        return concatenate_datasets(parts)

    def each(self, fn, calls: list[tuple]) -> list:
        """`fn(*args)` for every `args` in `calls`, on the workers; the results in order."""
        return self.client.gather([self.client.submit(fn, *args, pure=False) for args in calls])


def map_partition(part: Dataset, fn, fn_kwargs: dict, desc: str, options: dict, cache_file: str) -> Dataset:
    """One partition's map, on a worker, written to `cache_file` (returned as a Dataset that
    travels back by its file path, not by value)."""
    return part.map(fn, batched=True, fn_kwargs=fn_kwargs, desc=f"{desc} (partition)", cache_file_name=cache_file,
                    **options)


@contextmanager
def dask_client(address: str | None, workers: int) -> Iterator:
    """A client of the cluster at `address`; else of the cluster this code already runs on
    (a Dask worker: the lifecycle with runner=dask); else of a local cluster of `workers`
    processes, started here and closed at the end."""
    from distributed import Client, LocalCluster, get_worker, worker_client

    if address:
        with Client(address) as client:
            yield client
        return
    try:
        get_worker()
    except ValueError:  # not inside a Dask worker: a cluster of our own
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    with worker_client() as client:  # leaves the worker's slot while the partitions run: no deadlock
        yield client
