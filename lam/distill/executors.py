"""Task executors for the concurrent-learning loop, all behind :class:`concurrent.futures.Executor`.

No home-made scheduler: ``local`` is a process pool, ``submitit`` submits each task as a SLURM job (or a local
job with ``cluster="local"``, used in tests), ``dask`` hands tasks to a ``distributed`` cluster. ``inline``
runs a task at submission time in the calling process, which keeps tests deterministic and debuggable.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXECUTOR_KINDS = ("inline", "local", "submitit", "dask")


class InlineExecutor(cf.Executor):
    """Runs each task immediately in the calling process; the returned future is already done."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - the future carries any failure to the caller
            future.set_exception(exc)
        return future


class SubmititExecutor(cf.Executor):
    """Adapts a ``submitit`` executor (SLURM, or ``cluster="local"``) to :class:`concurrent.futures.Executor`.

    Each ``submit`` becomes one submitit job; a small watcher thread per job resolves the future when the job
    ends, so callers can use :func:`concurrent.futures.as_completed` and ``wait`` as with any executor.
    """

    def __init__(self, folder: str | Path, cluster: str | None = None, **parameters: Any) -> None:
        import submitit

        self._executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        if parameters:
            self._executor.update_parameters(**parameters)
        self._threads: list[threading.Thread] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        job = self._executor.submit(fn, *args, **kwargs)
        future: cf.Future = cf.Future()
        future.set_running_or_notify_cancel()

        def _watch() -> None:
            try:
                future.set_result(job.result())
            except BaseException as exc:  # noqa: BLE001
                future.set_exception(exc)

        thread = threading.Thread(target=_watch, daemon=True)
        thread.start()
        self._threads.append(thread)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if wait:
            for thread in self._threads:
                thread.join()
        self._threads.clear()


class DaskExecutor(cf.Executor):
    """A ``distributed`` client's executor; starts a local cluster when no scheduler address is given."""

    def __init__(self, address: str | None = None, n_workers: int = 2, threads_per_worker: int = 1) -> None:
        from distributed import Client, LocalCluster

        self._cluster = None
        if address is None:
            self._cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                dashboard_address=None,
            )
            address = self._cluster.scheduler_address
        self._client = Client(address)
        self._executor = self._client.get_executor()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait=wait)
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()


def make_executor(kind: str = "local", max_workers: int | None = None, folder: str | Path | None = None,
                  **options: Any) -> cf.Executor:
    """Build an executor by name: ``inline``, ``local`` (processes), ``submitit`` or ``dask``.

    ``folder`` is where submitit keeps job logs (required for ``submitit``). Extra ``options`` go to the
    submitit parameters (e.g. ``slurm_partition``, ``timeout_min``) or to the Dask executor (``address``).
    """
    if kind == "inline":
        return InlineExecutor()
    if kind == "local":
        # spawn: torch and h5py are not fork-safe once initialised in the parent.
        return cf.ProcessPoolExecutor(max_workers=max_workers, mp_context=mp.get_context("spawn"))
    if kind == "submitit":
        if folder is None:
            raise ValueError("executor 'submitit' needs folder= (where job logs and pickles are kept)")
        cluster = options.pop("cluster", None)
        return SubmititExecutor(folder, cluster=cluster, **options)
    if kind == "dask":
        return DaskExecutor(address=options.pop("address", None), n_workers=max_workers or 2)
    raise ValueError(f"unknown executor kind {kind!r}; choose one of {', '.join(EXECUTOR_KINDS)}")
