"""The eval stage: rows of several tasks in, scored output rows out, on one replica's engine.

Input rows come from `jobs.eval.tasks.read_tasks`: `id` (`task/id`), `task` and `input` (the
row's columns as JSON, so that tasks with different columns share one Ray Data pass and one replica
pool). Generation tasks run through `jobs.generate.stage.GenerationStage` on the shared engine and their
generations are scored; multiple-choice tasks go to `Engine.score`. A row that cannot be built or
scored becomes an error row.
"""

from __future__ import annotations

import json
import logging
from itertools import groupby
from typing import TYPE_CHECKING

import pyarrow as pa

from jobs.eval import multiple_choice as mc
from jobs.eval.config import RESERVED_COLUMNS, EvalConfig, TaskConfig
from jobs.eval.scorers import resolve
from jobs.generate.prompts import PromptBuilder, RowError
from jobs.generate.stage import (
    GenerationStage,
    describe,
    replica_label,
    set_cpu_threads,
    with_prefix_count,
)
from runner.config import JobConfig
from runner.engine.watchdog import Stalled, Watchdog
from runner.io.output_schema import result_fields
from runner.io.outputs import INPUT_ERROR
from runner.orchestration import startup_trace
from runner.orchestration.progress import Reporter

if TYPE_CHECKING:
    from runner.engine import Engine

log = logging.getLogger(__name__)


def output_schema(cfg: EvalConfig) -> pa.Schema:
    """The eval output's columns (RESERVED_COLUMNS, typed as generate's where they are generate's), then
    a column per metric."""
    types = {f.name: f.type for f in result_fields()}  # generate's types (no optional sample fields)
    types |= {"id": pa.string(), "task": pa.string(), "target": pa.string()}
    types["choice_logprobs"] = pa.list_(pa.float64())
    fields = [(name, types[name]) for name in RESERVED_COLUMNS]
    return pa.schema(fields + [(m, pa.float64()) for m in cfg.metric_columns()])


def task_job_config(cfg: EvalConfig, task: TaskConfig) -> JobConfig:
    """The generate config of one task: the shared sections with the task's data."""
    shared = cfg.model_dump(
        include={"model", "placement", "sampling", "batching", "output", "retries", "ray"}
    )
    return JobConfig.model_validate({**shared, "data": task.data.model_dump()})


def _target_text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


class GenerationTask:
    """A task scored on the generation: the generate stage on the shared engine, then the scorer."""

    def __init__(self, cfg: EvalConfig, task: TaskConfig, engine: Engine):
        self.task = task
        self.generate = GenerationStage(task_job_config(cfg, task), engine=engine)
        self.scorer = resolve(task.scoring)
        self.metric = task.scoring.metrics[0]

    def __call__(self, rows: list[dict]) -> list[dict]:
        out = self.generate(pa.Table.from_pylist(rows)).to_pylist()
        for row, result in zip(rows, out, strict=True):
            result["target"] = _target_text(row.get(self.task.scoring.target_column))
            if result["error"] is None:
                try:
                    result[self.metric] = float(self.scorer(row, result["generation"]))
                except Exception as err:  # noqa: BLE001 - a scorer failing on one row makes one error row
                    result["error"] = f"scorer {self.task.scoring.scorer}: {type(err).__name__}: {err}"
                    result["error_kind"] = "row"
        return out


class ChoiceTask:
    """A multiple-choice task: each choice's log-likelihood after the prompt, then acc and acc_norm."""

    def __init__(self, task: TaskConfig, engine: Engine):
        self.task = task
        self.engine = engine
        self.prompts = PromptBuilder(task.data.prompt, engine.tokenizer)
        special = task.data.prompt.messages_column is None  # a chat template writes its own
        self.tokenize = lambda text: engine.tokenizer(text, add_special_tokens=special)["input_ids"]
        self.watchdog = Watchdog(engine.batching.stall_timeout_s)  # scoring calls stall like generation

    def __call__(self, rows: list[dict]) -> list[dict]:
        self.watchdog.restart_if_broken()
        built = [self._question(row) for row in rows]
        requests = [r for q in built if isinstance(q, mc.Question) for r in q.requests]
        results = self._score(requests)
        return [self._output(row, q, results) for row, q in zip(rows, built, strict=True)]

    def _score(self, requests: list) -> dict:
        if not requests:
            return {}
        try:
            return {r.id: r for r in self.watchdog.call(lambda p: self.engine.score(requests, p))}
        except Stalled as err:
            from runner.engine.scoring import ScoreResult

            log.error("%s; failing %d choice(s)", err, len(requests))
            return {r.id: ScoreResult(r.id, error=str(err)) for r in requests}

    def _question(self, row: dict) -> mc.Question | RowError:
        if row.get(INPUT_ERROR) is not None:  # the reader could not read this row as data
            return RowError(row[INPUT_ERROR])
        context = self.prompts.build(row)
        if isinstance(context, RowError):
            return context
        try:
            q = mc.question(row, context, self.task.scoring, self.tokenize)
        except ValueError as err:
            return RowError(str(err))
        longest = max(r.length for r in q.requests)
        limit = self.engine.context_length
        if limit is not None and longest > limit:
            return RowError(f"context + choice has {longest} tokens > model context {limit}")
        return q

    def _output(self, row: dict, q: mc.Question | RowError, results: dict) -> dict:
        out = {
            "id": row["id"],
            "prompt": q.context if isinstance(q, mc.Question) else None,
            "target": _target_text(row.get(self.task.scoring.target_column)),
            "completion_tokens": 0,
            "prompt_tokens": 0,
        }
        if isinstance(q, RowError):
            return {**out, "error": q.reason, "error_kind": "row", "finish_reason": "error"}
        out["target"] = q.choices[q.gold]  # the choice's text: an index means nothing in a report
        scored = [results[r.id] for r in q.requests]
        failed = next((s.error for s in scored if s.error), None)
        if failed:
            return {**out, "error": failed, "finish_reason": "error"}
        lls = [s.logprob for s in scored]
        return {**out, "prompt_tokens": q.tokens, "choice_logprobs": lls, **mc.accuracy(q, scored)}


class EvalStage:
    """Loads the engine once; every task's rows are computed on it (the Ray Data UDF of `runner eval`)."""

    def __init__(
        self,
        cfg: EvalConfig,
        engine: Engine | None = None,
        cpu_threads: int | None = None,
        rows_ahead: int | None = None,
    ):
        from runner.engine import Engine

        startup_trace.mark("replica: stage constructed (its modules imported)")
        self.cpu_threads = set_cpu_threads(cpu_threads) if cpu_threads else None
        self.reporter = Reporter(cfg.output.path if engine is None else None)
        self.replica = replica_label()
        self.reporter.starting(self.replica)
        self.engine = engine or Engine(
            cfg.model, cfg.sampling, cfg.batching, cfg.placement, rows_ahead=rows_ahead
        )
        startup_trace.mark("replica: model loaded")
        self.reporter.ready(describe(self.engine))
        self.schema = output_schema(cfg)
        self.tasks = {
            t.name: ChoiceTask(t, self.engine)
            if t.scoring.loglikelihood
            else GenerationTask(cfg, t, self.engine)
            for t in cfg.task_list()
        }

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.cpu_threads:  # see GenerationStage: Ray's threads start with one torch thread
            set_cpu_threads(self.cpu_threads)
        out: list[dict] = []
        for name, group in groupby(batch.to_pylist(), key=lambda r: r["task"]):
            rows = [{**json.loads(r["input"]), "id": r["id"]} for r in group]
            results = self.tasks[name](rows)
            out.extend({**result, "task": name, "replica": self.replica} for result in results)
            failed = sum(1 for r in results if r.get("error"))
            self.reporter.add(len(results), failed, sum(r.get("completion_tokens") or 0 for r in results))
        return with_prefix_count(pa.Table.from_pylist(out, schema=self.schema), self.engine)
