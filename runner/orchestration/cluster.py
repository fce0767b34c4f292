"""Orchestration on Ray: connect, decide the replica pool, run the stage with Ray Data.

The shape follows Ray Data LLM's batch processor: a dataset of prompts, `map_batches` over a
fixed-size actor pool where each actor holds its GPUs and loads the model once, results streamed
back. Ray does the scheduling, retries and GPU assignment (it sets CUDA_VISIBLE_DEVICES per actor);
this module only translates the config into Ray's terms, and reads back how often replicas restarted.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from runner import compat, errors, logs
from runner.config import JobConfig, PlacementConfig, RayConfig, RetryConfig
from runner.errors import ConfigError, ReplicaFailed, RunnerError, first_line, root_cause
from runner.orchestration import startup_trace
from runner.orchestration.signals import exit_at_once

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pool:
    """The replica pool Ray Data will run: how many actors, and what each holds."""

    replicas: int
    gpus_per_replica: int
    cpus_per_replica: float


def connect(cfg: RayConfig) -> None:
    """Join a cluster (address) or start a local Ray bound to 127.0.0.1."""
    if not cfg.address:
        # A runner-started Ray serves this machine only: keep it on loopback (Ray otherwise
        # advertises the machine's routable IP). Read by Ray at import, so set before importing it.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    startup_trace.mark("driver: importing ray")
    import ray

    if ray.is_initialized():
        return
    startup_trace.mark("driver: ray.init")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    main = threading.current_thread() is threading.main_thread()
    # ray.init would replace the SIGTERM handler with one that exits with code 15; a job's own handler
    # (runner.orchestration.signals) stops cleanly and exits 143, so it is kept in place during the
    # start (compat.keep_sigterm_handler) and put back after it where that could not be done.
    previous = signal.getsignal(signal.SIGTERM) if main else None
    started = False
    try:
        with compat.keep_sigterm_handler():
            _init(ray, cfg)
        started = True
        startup_trace.mark("driver: ray.init done")
        logs.announce()
    except (KeyboardInterrupt, SystemExit) as err:
        if main and not started:
            # A signal while ray.init connects the driver lands in Ray's C++ failure-signal handler,
            # which arms a 3-second SIGALRM abort (cancelled: the runner sets no alarm of its own), and
            # can leave Ray's core worker half made, whose exit handler then crashes the process. So
            # once the job's output is final the process ends at once (the local Ray's processes are
            # killed already: compat.own_process_groups).
            signal.alarm(0)
            exit_at_once()
        # A SIGTERM while ray.init runs may meet Ray's handler (sys.exit(15): a silent exit); the
        # job's handler stops the job as at any other moment (summary, lease, exit 143, one line).
        if isinstance(err, SystemExit) and err.code == signal.SIGTERM and callable(previous):
            previous(signal.SIGTERM, None)
        raise
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


def _init(ray, cfg: RayConfig) -> None:
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=False)
        return
    # Its processes in process groups of their own: a signal to the driver's group stops the driver
    # cleanly, which then shuts Ray down (runner.orchestration.signals).
    with compat.own_process_groups():
        ray.init(
            address="local",  # a fresh local instance, never an unrelated `ray start` cluster on this machine
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )


def gpus_per_node() -> list[int]:
    """GPU count of each alive node."""
    import ray

    return [int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]


def hardware(gpu_memory: int | None = None):
    """The alive nodes as the planner sees them (runner.planning.hardware): GPUs, GPU memory (given,
    else each node's `gpu-memory` label or accelerator type), CPU memory (Ray's `memory` resource)."""
    import ray

    from runner.planning.hardware import Hardware, Node, node_gpu_memory

    nodes = []
    for n in (n for n in ray.nodes() if n.get("Alive")):
        res = n.get("Resources", {})
        memory = gpu_memory or node_gpu_memory(n.get("Labels") or {}, res)
        nodes.append(Node(int(res.get("GPU", 0)), memory, int(res["memory"]) if res.get("memory") else None))
    gpus = sum(n.gpus for n in nodes)
    return Hardware(tuple(nodes), f"Ray cluster: {len(nodes)} node(s), {gpus} GPU")


def plan_pool(placement: PlacementConfig, node_gpus: list[int]) -> Pool:
    """Replicas and per-replica resources for this cluster; ConfigError when it cannot fit."""
    total, largest = sum(node_gpus), max(node_gpus, default=0)
    k = placement.gpus_per_replica
    if total == 0:
        log.info("the cluster has no GPUs: running %s CPU replica(s)", placement.replicas or 1)
        return Pool(placement.replicas or 1, 0, placement.cpus_per_replica)
    if k > largest:
        raise ConfigError(
            f"placement.gpus_per_replica: {k} GPUs per replica, but the largest node has {largest} "
            "(a replica's GPUs must be on one node)"
        )
    fits = sum(g // k for g in node_gpus) if k else placement.replicas or 1
    replicas = placement.replicas or fits
    if replicas > fits:
        raise ConfigError(f"placement.replicas: {replicas} replicas x {k} GPUs do not fit ({fits} fit)")
    return Pool(replicas, k, placement.cpus_per_replica)


def replica_remote_args(cfg: RetryConfig) -> dict:
    """Ray actor options for the replicas (`max_restarts`, `max_task_retries`; set through
    `compat.map_batches_on_actors`, Ray Data having no named parameter for them): a dead replica is restarted and its batches rerun, boundedly.

    Ray Data's own default is unbounded (-1) restarts, which turns a replica that always crashes (a
    poison batch, a model that cannot fit) into a job that never ends: restarts stay bounded here.
    A batch's reruns are bounded by those restarts (a batch runs on one replica, and each crash of it
    uses a restart), so Ray's own task retry count is left unbounded unless `task_retries` is 0. A
    bounded count does not survive a lost node: each retry sent to the unreachable replica before
    Ray declares the node dead (seconds, its health checks) counts, and the count ran out before the
    replica was restarted elsewhere (measured in tests/test_multinode.py; ray#59522 is that failure).
    """
    return {"max_restarts": cfg.replica_restarts, "max_task_retries": -1 if cfg.task_retries else 0}


class RestartCounter:
    """Counts restarts of the replicas this job starts from now on (None when Ray cannot say).

    Read from Ray's actor table in the GCS: it counts every restart, including a replica that died
    again before returning a row, which the rows' `replica` labels cannot show. The public state
    API would need the dashboard, which the local Ray here runs without.
    """

    def __init__(self) -> None:
        self._before = set(self._replicas() or {})

    def count(self, timeout_s: float | None = None) -> int | None:
        """Restarts so far; None when Ray cannot say within `timeout_s` (a dead GCS blocks a read
        for Ray's reconnect timeout, a minute)."""
        replicas = self._replicas() if timeout_s is None else _within(timeout_s, self._replicas)
        if replicas is None:
            return None
        return sum(info["restarts"] for key, info in replicas.items() if key not in self._before)

    @staticmethod
    def _replicas() -> dict | None:
        actors = compat.ray_actor_table()
        if actors is None:
            return None
        # Ray Data names its actor class after the UDF class (MapWorker(MapBatches(GenerationStage))).
        return {key: info for key, info in actors.items() if "Stage" in info["class"]}


def _within(timeout_s: float, call):
    """`call()`'s result, or None when it has not returned within `timeout_s` (it is left running in
    a daemon thread: Ray's calls take no timeout of their own)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call()), name="ray-call", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return result[0] if result else None


def results(table, cfg: JobConfig, pool: Pool, stage: type) -> Iterator[pa.Table]:
    """`run_stage`'s output batches; a replica dead beyond its restarts becomes a `ReplicaFailed`."""
    from ray.exceptions import RayActorError

    try:
        yield from run_stage(table, cfg, pool, stage)
    except RayActorError as err:
        if root_cause(err) is not None:  # the replica raised our own error (e.g. loading the model)
            raise
        raised = replica_error(str(err))
        if raised is not None:
            raise raised from err
        first = first_line(err, type(err).__name__)
        retries = cfg.retries
        raise ReplicaFailed(
            f"retries: a replica kept dying (replica_restarts={retries.replica_restarts}, "
            f"task_retries={retries.task_retries} used up): {first} "
            "Committed output is kept; run the same command to resume."
        ) from err


_RAISED = re.compile(r"^runner\.errors\.(\w+): (.+)$", re.MULTILINE)


def replica_error(text: str) -> RunnerError | None:
    """Our error raised while a replica started (e.g. a kernel its GPU node cannot run), rebuilt from
    the traceback text Ray's ActorDiedError carries in place of the exception itself."""
    found = _RAISED.findall(text)
    if not found:
        return None
    name, message = found[-1]
    kind = getattr(errors, name, None)
    if not (isinstance(kind, type) and issubclass(kind, RunnerError)):
        return None
    return kind(f"{message} (raised by a replica)")


def _blocks(table: pa.Table, rows: int) -> list[pa.Table]:
    # One block per Ray Data batch, so the pool's actors share the work from the first batch on.
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)] or [table]


REPLICA_START_TIMEOUT_S = 1800


def cpu_threads(pool: Pool) -> int | None:
    """Torch threads of a CPU replica: the cluster's cores shared among the replicas (GPU ones: None).

    A replica's CPU reservation is kept small on purpose (Ray Data's own read/write tasks need CPUs
    too), so its thread count cannot come from the reservation; the replica caps it at its node's cores.
    """
    if pool.gpus_per_replica:
        return None
    import ray

    cores = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cores // pool.replicas)


def run_stage(table, cfg: JobConfig, pool: Pool, stage: type) -> Iterator[pa.Table]:
    """Stream output batches of `stage` (a job kind's Ray Data UDF class, constructed on each replica
    with `cfg=`, `cpu_threads=` and `rows_ahead=`: the rows to do over the replicas) run by the
    replica pool over `table` (a table, or a streamed input's `Pending` rows)."""
    startup_trace.mark("driver: planning the Ray Data dataset")
    import ray.data

    rows, in_flight = cfg.batching.rows_per_task, cfg.batching.batches_in_flight
    # Several batches per replica, their UDF calls truly concurrent (as Ray Data LLM's
    # max_concurrent_batches): while one batch is generating, the next is already tokenized and
    # submitted, so the engine never waits between Ray Data batches. The engine is thread-safe.
    compute = ray.data.ActorPoolStrategy(
        size=pool.replicas,
        max_tasks_in_flight_per_actor=in_flight,
        max_concurrent_calls_per_actor=in_flight,
        enable_true_multi_threading=in_flight > 1,
    )
    # Dispatch only once every replica has loaded its model: otherwise the first replica up takes the
    # first batches and the pool starts unbalanced; a pool the cluster cannot hold fails after the wait.
    ray.data.DataContext.get_current().wait_for_min_actors_s = REPLICA_START_TIMEOUT_S
    if isinstance(table, pa.Table):
        # from_blocks, not from_arrow: it keeps our blocks as they are and computes their metadata
        # here, where from_arrow runs a Ray task for it (a worker to start, ~2 s on a small machine).
        ds = ray.data.from_blocks(_blocks(table, rows))
    else:  # a streamed input (`JobDir.pending`): read by Ray Data's read tasks on the workers
        ds = table.dataset(rows)
    ds = compat.map_batches_on_actors(
        ds,
        stage,
        fn_constructor_kwargs={
            "cfg": cfg,
            "cpu_threads": cpu_threads(pool),
            "rows_ahead": -(-table.num_rows // pool.replicas),
        },
        batch_size=rows,
        batch_format="pyarrow",
        compute=compute,
        num_gpus=pool.gpus_per_replica,
        num_cpus=pool.cpus_per_replica,
        **replica_remote_args(cfg.retries),
    )
    for i, batch in enumerate(ds.iter_batches(batch_format="pyarrow", batch_size=None)):
        if i == 0:
            startup_trace.mark("driver: first output batch")
        yield batch
    startup_trace.mark("driver: last output batch")
