"""A Hydra launcher that runs each job of a sweep or search as a Prefect deployment run
(hydra/launcher=prefect): the jobs go to whatever workers serve the deployment's pool."""
