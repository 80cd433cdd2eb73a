"""The Dask worker plugin of the archive engine (imported only when Dask runs)."""

from __future__ import annotations

from distributed import WorkerPlugin


class WarmUp(WorkerPlugin):
    """Each Dask worker (and any that joins later) picks its device and loads the run's
    encoders once, when the plugin is registered; the worker process keeps them between
    tasks (:func:`mmpath.archive.job.warm_up`)."""

    idempotent = True

    def __init__(self, config: dict) -> None:
        self.config = config

    def setup(self, worker) -> None:
        from mmpath.archive import job
        from mmpath.archive.engines import dask_device

        dask_device(worker)
        job.warm_up(self.config)
