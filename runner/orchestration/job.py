"""The lifecycle every job kind shares: preflight, resume, streaming into part files, the summary.

Order of work: everything that can be wrong with the config, the input or the output directory is
checked before Ray starts or a model loads; then rows already committed by an earlier run of the
same job are skipped; then output streams into atomic part files as the replicas produce it; the
summary records how the run ended, always.

A job kind (`jobs/generate/job.py`, `jobs/eval/job.py`) supplies what differs: its config, how it reads its
input rows (a table whose first column is a unique string `id`), and the Ray Data stage class that
turns input batches into output batches. Everything else lives here once.

Resume is by row id, not Ray Data's checkpointing (`DataContext.checkpoint_config`): Ray's only
applies to a plan that reads from a datasource and ends in a Ray write sink (elsewhere it is
silently disabled with a warning), while a job streams output to the driver so that part files are
committed atomically, one writer, with a summary next to them. Ray's would also need its own
checkpoint directory on shared storage and write files under names we do not control. Ids give
exactly-once here: a row is done iff its id is in a committed part.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pyarrow as pa

from runner.config import JobConfig
from runner.engine.model_source import check_model
from runner.errors import JobFailed
from runner.io.jobdir import JobDir
from runner.io.lease import LeaseLost
from runner.io.stream import StreamedInput, open_input
from runner.io.summary import JobStats, build_summary, previous_totals
from runner.orchestration import cluster
from runner.orchestration.progress import Progress, close_board, open_board
from runner.orchestration.signals import Interrupted, StopSignals
from runner.planning.start import start_check

log = logging.getLogger(__name__)

RAY_WAIT_S = 3.0  # the longest the summary waits on Ray (a restart count) before saying "unknown"


def check_demands(cfg: JobConfig) -> None:
    """On a local Ray the replicas run on this machine: a kernel or quantization the config demands
    and this machine cannot run fails here, in a second, not in every replica after start-up.

    On a cluster the GPU nodes may have what the driver's machine lacks; there the replica raises
    the same error. Needs torch, so it is only imported when the config demands something."""
    demands = cfg.model.attention == "flash_attention_2" or cfg.model.quantization.mode != "none"
    if cfg.ray.address or not demands:
        return
    from runner.engine.loading import check_settings

    check_settings(cfg.model, cfg.placement)


class Job:
    """One run of a job kind over its input, into `cfg.output.path`.

    `read(cfg)` returns the input rows: a table whose first column is `id`, or a `StreamedInput`
    (the default: `runner.io.stream.open_input(cfg.data)`, read by Ray Data on the workers, so the
    driver's memory does not grow with the input). `stage` is the Ray Data UDF class the replicas
    run (constructed with `cfg=`); `summary_extra(job_dir)` adds a kind's own summary fields;
    `on_done(summary)` writes a kind's own files once the rows are done, while the lease is still held.
    """

    def __init__(
        self,
        cfg: JobConfig,
        stage: type,
        read: Callable[[JobConfig], pa.Table | StreamedInput] | None = None,
        summary_extra: Callable[[JobDir], dict] | None = None,
        on_done: Callable[[dict], None] | None = None,
    ):
        self.cfg = cfg
        self.on_done = on_done
        self.stage = stage
        self.read = read or (lambda c: open_input(c.data))
        self.summary_extra = summary_extra or (lambda _dir: {})
        self.dir = JobDir(cfg.output.path)
        self._cleared = False  # `--overwrite` removed the previous job's files (this run)
        self._before: dict = {}  # the directory's totals before this run (runner.io.summary.previous_totals)
        self._resolved: dict = {}  # replicas and each engine's choices, for the summary

    def preflight(self, overwrite: bool) -> pa.Table | StreamedInput:
        """Every check that needs no cluster: model path, input and its columns, output directory.

        `run` does the same with the directory's lease held between the two halves."""
        table = self.check_input()
        self.check_output(overwrite)
        return table

    def check_input(self) -> pa.Table | StreamedInput:
        """Model path, kernels the config demands, the input and its columns: nothing is written."""
        check_model(self.cfg.model)
        check_demands(self.cfg)
        return self.read(self.cfg)

    def check_output(self, overwrite: bool) -> None:
        """The output directory: writable, temps a crash left removed, an earlier run's settings match."""
        self.dir.prepare()
        self.dir.check_previous(self.cfg, overwrite)

    def run(
        self, overwrite: bool = False, max_error_rate: float | None = None, retry_errors: bool = False
    ) -> dict:
        """Run to completion and return the summary (also written to the directory).

        The output directory's lease is taken before anything is written to it and held to the end,
        so two drivers never write one directory. SIGINT / SIGTERM raise `Interrupted` after
        committing what is complete; rerunning resumes.
        """
        started = JobStats()  # the clock starts before Ray does: wall time includes its start-up
        with StopSignals() as signals:
            table = self.check_input()
            with self.dir.lease(self.cfg.output.lease_timeout_s):
                self.check_output(overwrite)
                self._before = previous_totals(None if overwrite else self.dir.summary())
                try:
                    pool, todo, stats = self._start(table, overwrite, retry_errors, signals, started)
                except Interrupted:  # while Ray starts, say: no summary of this run yet
                    self._interrupted_before_start(overwrite, signals)
                    raise
                summary = self._stream(pool, todo, stats, signals)
                if self.on_done is not None:  # still under the lease: a kind's own files (eval's metrics)
                    with signals.hold():
                        self.dir.fence()
                        self.on_done(summary)
        check_error_rate(summary, max_error_rate)
        return summary

    def _start(self, table, overwrite: bool, retry_errors: bool, signals: StopSignals, started: JobStats):
        """Ray, the replica pool, `--overwrite` / `--retry-errors`, the rows still to do."""
        self._cleared = False
        address = self.cfg.ray.address
        log.info(f"connecting to Ray at {address}" if address else "starting Ray")
        cluster.connect(self.cfg.ray)
        signals.check()  # a signal whose exception Ray's start swallowed
        self.cfg = start_check(self.cfg, cluster.hardware())  # auto placement; "does not fit": exit 2
        pool = cluster.plan_pool(self.cfg.placement, cluster.gpus_per_node())
        with signals.hold():
            if overwrite:  # only now, so a config that fails its checks destroys nothing
                removed = self.dir.clear()
                self._cleared = True
                log.info("--overwrite: removed %d file(s) of the previous run", len(removed))
            retried = self.dir.drop_retryable_errors() if retry_errors and not overwrite else 0
        if retried:
            log.info("--retry-errors: %d error row(s) of earlier runs will be generated again", retried)
        todo, skipped = self.dir.pending(table)
        log.info(
            "%d rows to do (%d already done), %d replica(s) x %d GPU",
            todo.num_rows,
            skipped,
            pool.replicas,
            pool.gpus_per_replica,
        )
        stats = JobStats(rows_skipped=skipped, rows_retried=retried, rows_todo=todo.num_rows)
        stats.started, stats.started_at = started.started, started.started_at
        return pool, todo, stats

    def _interrupted_before_start(self, overwrite: bool, signals: StopSignals) -> None:
        """A signal before the first row: the summary says `interrupted` (with this run's config), unless
        `--overwrite` had not yet removed a previous job's files, whose summary then stays theirs."""
        if overwrite and not self._cleared:
            return
        with signals.hold():
            self.dir.write_summary(self._summary(None, JobStats(), "interrupted", None))

    def _stream(self, pool: cluster.Pool, todo, stats: JobStats, signals: StopSignals) -> dict:
        """Stream the stage's output into part files; the summary records how it ended, always."""
        restarts: cluster.RestartCounter | None = None
        board = open_board(self.cfg.output.path) if todo.num_rows else None
        progress = Progress(todo.num_rows, pool.replicas, board)

        def finish(status: str) -> dict:
            with signals.hold():
                if status != "running":
                    marked = min(self._settle(), stats.rows_ok)  # this run's rows, now error rows
                    stats.rows_ok, stats.rows_error = stats.rows_ok - marked, stats.rows_error + marked
                    progress.__exit__()  # its last poll brings the engines' descriptions
                    close_board(board)
                self._resolved = {"replicas": pool.replicas, "gpus_per_replica": pool.gpus_per_replica}
                self._resolved["engine"] = progress.engine_summary()
                if status == "done" and signals.received is not None:
                    status = "interrupted"  # the signal came during the final commit: it ends the run
                # Bounded: a scheduler that signals the whole process group has killed Ray too.
                count = restarts.count(RAY_WAIT_S) if restarts is not None else None
                summary = self._summary(pool, stats, status, count)
                self.dir.write_summary(summary)  # fenced: a run that lost its lease writes none
            return summary

        out = self.cfg.output
        writer = self.dir.writer(out.rows_per_file, out.flush_seconds)
        flusher = None
        try:
            restarts = cluster.RestartCounter()
            finish("running")  # before the first part: a killed run still says which config wrote them
            flusher = _Flusher(writer, out.flush_seconds)
            batches = cluster.results(todo, self.cfg, pool, self.stage) if todo.num_rows else []
            for batch in batches:
                with signals.hold():  # a deferred signal fires after both: the summary counts the rows
                    writer.write(batch)
                    stats.add(batch)
                progress.update(batch.num_rows, stats)
                signals.check()
            flusher.stop()
            self._commit_rest(writer, signals)
            return finish("done")
        except LeaseLost:
            if flusher is not None:
                flusher.stop()
            progress.__exit__()
            close_board(board)
            raise  # another driver owns the directory now: write nothing more, not even the summary
        except BaseException as err:
            if flusher is not None:
                flusher.stop()
            self._commit_rest(writer, signals)
            # After a signal, Ray's own error (its processes got the signal too) is the signal's.
            stopped = isinstance(err, Interrupted) or signals.received is not None
            finish("interrupted" if stopped else "failed")
            if stopped and not isinstance(err, Interrupted):
                raise Interrupted(signals.received) from err
            raise

    def _settle(self) -> int:
        """Before the final summary: repeated ids become error rows (a streamed input meets its
        duplicates only here; returns how many), and parts a superseded holder linked late go."""
        marked = self.dir.mark_duplicate_ids()
        if marked:
            log.warning("%d row(s) repeat an earlier row's id: written as error rows naming the id", marked)
        self.dir.sweep()
        return marked

    @staticmethod
    def _commit_rest(writer, signals: StopSignals) -> None:
        # Buffered rows are finished results: commit them, so a rerun does not redo them.
        with signals.hold():
            writer.close()

    def _summary(self, pool: cluster.Pool | None, stats: JobStats, status: str, restarts: int | None) -> dict:
        rows, errors = self.dir.catalogue.counts()
        extra = {}
        if status != "running":  # a full read of the ids: once, at the end
            extra["output_ids_distinct"] = self.dir.catalogue.distinct_ids()
        return build_summary(
            self.cfg,
            stats,
            self._before,
            status=status,
            resolved=self._resolved,
            replicas=pool.replicas if pool is not None else None,
            gpus_per_replica=pool.gpus_per_replica if pool is not None else None,
            replica_restarts=restarts,
            output_rows=rows,
            output_rows_error=errors,
            **extra,
            **self.summary_extra(self.dir),
        )


class _Flusher:
    """Commits the writer's buffer on time while the driver waits on Ray for the next batch."""

    def __init__(self, writer, flush_seconds: float):
        self.writer = writer
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._period = max(0.5, min(5.0, flush_seconds / 4))
        self._thread = threading.Thread(target=self._loop, name="output-flush", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self.writer.flush_due()
            except BaseException as err:  # noqa: BLE001 - the next commit on the main thread raises it again
                log.warning("timed flush failed: %s", err)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def check_error_rate(summary: dict, max_error_rate: float | None) -> None:
    """Over every row in the output, earlier runs of a resumed job included."""
    rows, errors = summary["output_rows"], summary["output_rows_error"]
    rate = errors / rows if rows else 0.0
    if max_error_rate is not None and rate > max_error_rate:
        raise JobFailed(
            f"{errors} of {rows} rows failed ({rate:.1%} > --max-error-rate {max_error_rate:.1%}); "
            "the output is written"
        )
