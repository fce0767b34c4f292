"""The generation stage: a batch of input rows in, a batch of output rows out.

It joins prompt building, tokenization, the engine and the output schema, and is a plain callable
class: Ray Data runs it as the `map_batches` UDF of each replica, tests and benchmarks call it
directly. Every input row comes out exactly once; a bad row comes out as an error row.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from jobs.generate.extra_outputs import ExtraColumns
from jobs.generate.parts import run_parts, split
from jobs.generate.prompts import PromptBuilder, RowError
from jobs.generate.row_options import RowOptions
from runner.config import JobConfig
from runner.engine import Completion, Request
from runner.engine.types import Progress
from runner.engine.watchdog import Stalled, Watchdog
from runner.errors import ConfigError, first_line
from runner.io.catalogue import duplicate_id_error
from runner.io.output_schema import output_schema, sampling_params
from runner.io.outputs import INPUT_ERROR
from runner.io.summary import PREFIX_REUSED_KEY
from runner.orchestration import startup_trace
from runner.orchestration.progress import Reporter

if TYPE_CHECKING:
    from runner.engine import Engine

log = logging.getLogger(__name__)


def replica_label() -> str:
    """host:pid, the Ray node (first 8 hex digits of its id: nodes of one host differ there) and the
    GPUs Ray gave this process (CUDA_VISIBLE_DEVICES)."""
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES") or "-"
    return f"{socket.gethostname()}:{os.getpid()} node={_node_id()} gpus={gpus}"


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()[:8] if ray.is_initialized() else "-"
    except Exception:  # noqa: BLE001 - a label, never a reason to fail
        return "-"


def set_cpu_threads(share: int) -> int:
    """Use `share` threads for the calling thread's torch CPU kernels, at most this process's cores.

    Ray starts a worker with OMP_NUM_THREADS set to its CPU reservation (1 for a replica's fractional
    one), which would leave a CPU replica computing on one core. OpenMP keeps the thread count per
    thread: a thread Ray creates to run a concurrent batch starts from the environment's 1 whatever
    another thread set (measured: a matmul loop ran on one core in a threaded actor until set in the
    calling thread), so the stage sets it in every thread that calls the engine. More threads than
    cores would make OpenMP's threads wait on each other. Returns the count used.
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, min(share, cores))
    torch.set_num_threads(threads)
    return threads


def with_prefix_count(table: pa.Table, engine) -> pa.Table:
    """`table` carrying the engine's running count of prompt tokens reused from shared prefixes
    (schema metadata; the driver sums each replica's latest into _job.json, runner.io.summary)."""
    parts = (getattr(engine, "generator", None), getattr(engine, "scorer", None))
    count = sum(getattr(part, "prefix_tokens_reused", 0) for part in parts)
    return table.replace_schema_metadata({**(table.schema.metadata or {}), PREFIX_REUSED_KEY: str(count)})


def describe(engine) -> dict:
    """The engine's own description (runner.engine.Engine.describe); a stand-in engine may lack one."""
    own = getattr(engine, "describe", None)
    return own() if callable(own) else {"strategy": getattr(engine, "strategy", None)}


@dataclass
class _Row:
    id: str
    prompt: str | None = None
    request: Request | None = None
    error: str | None = None


def readable_rows(batch: pa.Table) -> list[dict]:
    """The batch as Python rows; a row that cannot convert (invalid UTF-8 in a string column)
    becomes a row carrying only its id and an input error naming the column."""
    try:
        return batch.to_pylist()
    except Exception:  # noqa: BLE001 - find the rows that fail, keep the others
        pass
    rows = []
    for i in range(batch.num_rows):
        one = batch.slice(i, 1)
        try:
            rows.append(one.to_pylist()[0])
        except Exception:  # noqa: BLE001
            bad = next(name for name in one.column_names if _unconvertible(one.column(name)))
            raw = one.column("id").cast(pa.binary())[0].as_py() or b""
            rows.append({"id": raw.decode("utf-8", "replace"), INPUT_ERROR: f"column {bad!r}: invalid data"})
    return rows


def refuse_repeated_ids(rows: list[_Row]) -> list[_Row]:
    """Rows after the first with an id another row of the batch has become error rows naming it: the
    engine matches completions to requests by id, so two requests must never share one. (Repeats in
    different batches meet in the output: `runner.io.catalogue.Catalogue.mark_duplicates`.)"""
    seen: set[str] = set()
    for row in rows:
        if row.id in seen and row.error is None:
            row.error, row.request = duplicate_id_error(row.id), None
        seen.add(row.id)
    return rows


def _unconvertible(column: pa.ChunkedArray) -> bool:
    try:
        column.to_pylist()
        return False
    except Exception:  # noqa: BLE001
        return True


class GenerationStage:
    """Loads the engine once; turns input batches (pyarrow) into output batches."""

    def __init__(
        self,
        cfg: JobConfig,
        engine: Engine | None = None,
        cpu_threads: int | None = None,
        rows_ahead: int | None = None,
    ):
        """`cpu_threads`: torch threads for a replica computing on CPU, its share of the node's cores;
        `rows_ahead`: the job's rows to do over its replicas (the engine's `rows_ahead`)."""
        from runner.engine import Engine

        if engine is None:  # a stage given an engine is part of another (eval's), which marks for it
            startup_trace.mark("replica: stage constructed (its modules imported)")
        self.cpu_threads = set_cpu_threads(cpu_threads) if cpu_threads else None
        self.cfg = cfg
        # A stage given an engine is part of another (eval's), which reports for it.
        self.reporter = Reporter(cfg.output.path if engine is None else None)
        self.replica = replica_label()
        self.reporter.starting(self.replica)
        self.engine = engine or Engine(
            cfg.model, cfg.sampling, cfg.batching, cfg.placement, rows_ahead=rows_ahead
        )
        if engine is None:
            startup_trace.mark("replica: model loaded")
        self.reporter.ready(describe(self.engine))
        self.prompts = PromptBuilder(cfg.data.prompt, self.engine.tokenizer)
        self.options = RowOptions(cfg)  # per-row sampling / schema / adapter columns
        self._check_row_options(cfg)
        # columns only some options add
        self.extra_columns = ExtraColumns(cfg, self.engine.tokenizer, self.logprobs_column)
        self.watchdog = Watchdog(cfg.batching.stall_timeout_s)

    # Hooks for a job kind whose rows carry their own n and logprobs (jobs/openai_batch): every row
    # then fills `samples`, and the logprobs column exists whichever rows ask for it.
    @property
    def lists(self) -> bool:
        """Whether every generated row fills `samples`, one-sample rows too (else only rows of n > 1)."""
        return False

    @property
    def logprobs_column(self) -> bool:
        """Whether the output has the `logprobs` column (null in rows that did not ask for logprobs)."""
        return self.cfg.sampling.logprobs is not None

    def _check_row_options(self, cfg: JobConfig) -> None:
        """Per-row option columns the engine's strategy cannot honour fail at start, not on every row."""
        if getattr(self.engine, "row_options_supported", True):
            return
        fields = [f for f in cfg.data.OPTION_COLUMN_FIELDS if getattr(cfg.data, f)]
        if fields:
            raise ConfigError(
                f"data.{fields[0]}: per-row options are not supported for this model, which runs with "
                f"the {self.engine.strategy} strategy only"
            )

    def __call__(self, batch: pa.Table) -> pa.Table:
        startup_trace.mark("replica: batch in")
        self.watchdog.restart_if_broken()
        if self.cpu_threads:  # Ray runs concurrent batches on threads of its own: set in each
            set_cpu_threads(self.cpu_threads)
        # Announced before tokenizing: batches in flight on this replica are planned together.
        announced = self.engine.announce()
        announced.__enter__()
        try:
            rows = refuse_repeated_ids([self._prepare_safely(row) for row in readable_rows(batch)])
        except BaseException:
            announced.__exit__(None, None, None)
            raise
        requests = [r.request for r in rows if r.request is not None]
        done, isolated, took = {}, set(), {}

        def run(part: list[Request]) -> None:
            self._generate(part, done, isolated, took)
            self._report(part, done)

        run_parts(self.engine, split(requests, getattr(self.engine, "strategy", "")), run, announced)
        self.reporter.add(len(rows) - len(requests), len(rows) - len(requests), 0)  # rows that never ran
        if len(isolated) == len(requests):  # every row failed alone: the engine is broken, not the rows
            isolated.clear()
        startup_trace.mark("replica: batch done")
        return with_prefix_count(self._output(batch, rows, done, isolated, took), self.engine)

    def _report(self, part: list[Request], done: dict) -> None:
        completions = [done.get(r.id) for r in part]
        failed = sum(1 for c in completions if c is None or c.error)
        tokens = sum(c.generated_tokens for c in completions if c is not None)
        self.reporter.add(len(part), failed, tokens)

    def _generate(self, requests: list[Request], done: dict, isolated: set, took: dict | None = None) -> None:
        """Complete `requests` into `done`; a call that raises (not out of memory: the engine splits
        those itself) is bisected until the row that causes it fails alone, the others still generate."""
        import torch

        if not requests:
            return
        started = time.monotonic()
        try:
            done.update((c.id, c) for c in self.watchdog.call(lambda p: self._engine_generate(requests, p)))
            if took is not None:  # each row's time: that of the call that completed it
                took.update(dict.fromkeys((r.id for r in requests), time.monotonic() - started))
            return
        except torch.OutOfMemoryError:
            raise
        except Stalled as err:  # the engine, not these rows: every row fails as a retryable engine error
            log.error("%s; failing %d row(s)", err, len(requests))
            done.update((r.id, Completion.failed(r.id, str(err))) for r in requests)
            return
        except Exception as err:  # noqa: BLE001 - any failure of one row must not fail its batch
            if len(requests) == 1:
                reason = f"engine: {type(err).__name__}: {first_line(err)}"
                log.warning("row %s fails on its own: %s", requests[0].id, reason)
                done[requests[0].id] = Completion.failed(requests[0].id, reason)
                isolated.add(requests[0].id)
                return
            log.warning("a batch of %d rows failed (%s); bisecting to isolate the row", len(requests), err)
        half = len(requests) // 2
        self._generate(requests[:half], done, isolated, took)
        self._generate(requests[half:], done, isolated, took)

    def _engine_generate(self, requests: list[Request], progress: Progress) -> list[Completion]:
        # The watchdog runs the call on a thread of its own: OpenMP's thread count is per thread.
        if self.cpu_threads:
            set_cpu_threads(self.cpu_threads)
        return self.engine.generate(requests, progress)

    def _prepare_safely(self, row: dict) -> _Row:
        try:
            return self._prepare(row)
        except Exception as err:  # noqa: BLE001 - a tokenizer or value surprise is this row's error
            return _Row(id=row["id"], error=f"prepare: {type(err).__name__}: {first_line(err)}")

    def _prepare(self, row: dict) -> _Row:
        out = _Row(id=row["id"])
        if row.get(INPUT_ERROR) is not None:
            out.error = row[INPUT_ERROR]
            return out
        prompt = self.prompts.build(row)
        limit = self.options.max_new_tokens(row)
        options = self.options.for_row(row)
        problem = next((p for p in (prompt, limit, options) if isinstance(p, RowError)), None)
        if problem is not None:
            out.error = problem.reason
            return out
        out.prompt = prompt
        ids = self._tokenize(prompt)
        ids = self._fit_context(ids, limit)
        if isinstance(ids, RowError):
            out.error = ids.reason
        else:
            out.request = Request(out.id, ids, limit, **options)
        return out

    def _tokenize(self, prompt: str) -> list[int]:
        # A chat template already wrote the special tokens it wants (BOS included).
        special = not self.cfg.data.prompt.uses_chat_template
        return self.engine.tokenizer(prompt, add_special_tokens=special)["input_ids"]

    def _fit_context(self, ids: list[int], limit: int) -> list[int] | RowError:
        context = self.engine.context_length
        if context is None or len(ids) + limit <= context:
            return ids
        room = context - limit
        if self.cfg.data.overlong == "truncate_left" and room > 0:
            return ids[-room:]
        return RowError(
            f"prompt has {len(ids)} tokens + max_new_tokens {limit} > model context {context} "
            "(set data.overlong: truncate_left to keep the last tokens)"
        )

    def _output(
        self,
        batch: pa.Table,
        rows: list[_Row],
        done: dict[str, Completion],
        isolated: set = frozenset(),
        took: dict | None = None,
    ) -> pa.Table:
        """One output row per input row, typed by `runner.io.output_schema` (docs/outputs.md)."""
        keep = batch.select(["id", *self.cfg.data.carry_columns])
        # `id` and the carried columns keep their input types; the columns added are `output_schema`'s.
        added = list(output_schema(self.cfg, logprobs=self.logprobs_column))[1:]
        results = [self._result(row, done, isolated, took or {}) for row in rows]
        arrays = [pa.array([r[f.name] for r in results], f.type) for f in added]
        return pa.Table.from_arrays([*keep.columns, *arrays], schema=pa.schema([*keep.schema, *added]))

    def _result(self, row: _Row, done: dict, isolated: set, took: dict) -> dict:
        # Keyed by the row's own request: a row that sent none (a repeated id) gets no completion.
        c = done.get(row.request.id) if row.request is not None else None
        error = row.error or (c.error if c is not None else "engine returned no result")
        # A row's own fault (input, prompt, context, a row that fails alone) or the engine's.
        kind = None if not error else ("row" if row.error or row.id in isolated else "engine")
        extras = self.extra_columns.per_sample(row, c) if not error else []
        samples = [] if error else [self._sample(c, j, extras[j]) for j in range(len(c.texts))]
        return {
            "prompt": row.prompt,
            "generation": samples[0]["text"] if samples else None,
            "prompt_tokens": len(row.request.prompt_ids) if row.request else 0,
            "completion_tokens": c.generated_tokens if c is not None else 0,
            "finish_reason": samples[0]["finish_reason"] if samples else "error",
            "error": error,
            "error_kind": kind,
            "replica": self.replica,
            "time_taken_llm": took.get(row.request.id) if row.request is not None else None,
            "sampling_params": sampling_params(self.cfg, row.request) if row.request else None,
            # One sample: it is `generation` (unless this job kind lists every row's samples).
            "samples": samples if samples and (len(samples) > 1 or self.lists) else None,
            **self.extra_columns.columns(not error, extras, c),
        }

    @staticmethod
    def _sample(c: Completion, j: int, extra: dict) -> dict:
        tokens = len(c.token_ids[j]) if j < len(c.token_ids) else 0
        return {
            "index": j,
            "text": c.texts[j],
            "finish_reason": c.finish_reasons[j],
            "completion_tokens": tokens,
            **extra,
        }
