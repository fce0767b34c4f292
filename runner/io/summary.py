"""Job accounting: counts and token totals while output streams in, and the `_job.json` summary."""

from __future__ import annotations

import importlib.metadata
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from runner.config import JobConfig
from runner.io.output_schema import OUTPUT_SCHEMA_VERSION

# Schema metadata of a stage's output batch: its replica's running count of prompt tokens reused from
# shared prefixes (runner.engine.prefix). Running, not per batch: concurrent batches share the engine.
PREFIX_REUSED_KEY = b"runner.prefix_tokens_reused"

_LIBRARIES = [
    "torch",
    "transformers",
    "accelerate",
    "bitsandbytes",
    "ray",
    "pyarrow",
    "datasets",
    "flash-attn",
]


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that change results or speed."""
    out: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class JobStats:
    """Running totals over output batches."""

    rows_ok: int = 0
    rows_error: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    rows_skipped: int = 0
    rows_retried: int = 0  # error rows of earlier runs dropped to be generated again (--retry-errors)
    rows_todo: int = 0  # rows this run set out to do
    started: float = field(default_factory=time.monotonic)  # the run's start, Ray's start-up included
    started_at: str = field(default_factory=lambda: utc_now())
    prefix_reused: dict[str, int] = field(default_factory=dict)  # replica -> its latest running count

    def add(self, batch: pa.Table) -> None:
        errors = batch.num_rows - batch.column("error").null_count
        self.rows_error += errors
        self.rows_ok += batch.num_rows - errors
        self.prompt_tokens += int(pc.sum(batch.column("prompt_tokens")).as_py() or 0)
        self.generated_tokens += int(pc.sum(batch.column("completion_tokens")).as_py() or 0)
        reused = (batch.schema.metadata or {}).get(PREFIX_REUSED_KEY)
        if reused is not None and batch.num_rows and "replica" in batch.column_names:
            replica = batch.column("replica")[0].as_py()
            self.prefix_reused[replica] = max(self.prefix_reused.get(replica, 0), int(reused))

    @property
    def prefix_tokens_reused(self) -> int:
        return sum(self.prefix_reused.values())

    @property
    def rows(self) -> int:
        return self.rows_ok + self.rows_error

    @property
    def wall_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def error_rate(self) -> float:
        return self.rows_error / self.rows if self.rows else 0.0

    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0


def utc_now() -> str:
    """Now, UTC, ISO 8601 to the second (`2026-12-04T05:01:02Z`)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# This run's own figures, also summed over every run of the directory into `totals`.
_ADDED = ("rows_ok", "rows_error", "prompt_tokens", "generated_tokens", "prefix_tokens_reused", "wall_time_s")


def previous_totals(previous: dict | None) -> dict:
    """The directory's totals before this run: an earlier summary's `totals`, or (a summary written
    before totals existed) that run's own figures; nothing for a new or overwritten directory."""
    if not previous:
        return {}
    if "totals" in previous:
        return dict(previous["totals"])
    return {"runs": 1, **{k: previous.get(k, 0) or 0 for k in _ADDED}}


def totals(before: dict, run: dict) -> dict:
    """`before` (previous_totals) plus this run's figures; `runs` counts this one."""
    out = {"runs": before.get("runs", 0) + 1}
    for key in _ADDED:
        out[key] = (
            round((before.get(key) or 0) + run[key], 3)
            if key == "wall_time_s"
            else (before.get(key) or 0) + run[key]
        )
    return out


def build_summary(cfg: JobConfig, stats: JobStats, before: dict | None = None, **extra) -> dict:
    """The _job.json document.

    `rows_*`, the token counts and `wall_time_s` count this run (Ray's start-up included), from
    `started_at` to `ended_at` (absent while running); `totals` sums them over every run of the
    directory (`before`: `previous_totals`). `extra` adds what the job knows: `status` (running, done,
    failed, interrupted), `replica_restarts`, `resolved` (replicas and each engine's choices), and
    `output_rows` / `output_rows_error` over the whole output directory, earlier runs included.
    """
    run = {
        "rows_ok": stats.rows_ok,
        "rows_error": stats.rows_error,
        "prompt_tokens": stats.prompt_tokens,
        "generated_tokens": stats.generated_tokens,
        "prefix_tokens_reused": stats.prefix_tokens_reused,
        "wall_time_s": round(stats.wall_s, 3),
    }
    ended = {} if extra.get("status", "running") == "running" else {"ended_at": utc_now()}
    return {
        "config": cfg.model_dump(mode="json"),
        "config_hash": cfg.result_hash(),
        "model": cfg.model.path,
        "versions": library_versions(),
        "output_schema": OUTPUT_SCHEMA_VERSION,
        "started_at": stats.started_at,
        **ended,
        **run,
        "input_rows": stats.rows_skipped + stats.rows_todo,
        "rows_skipped_already_done": stats.rows_skipped,
        "rows_retried": stats.rows_retried,
        "generated_tokens_per_s": round(stats.tokens_per_s(), 2),
        "totals": totals(before or {}, run),
        **extra,
    }


def one_line(summary: dict, path: str) -> str:
    """What the CLI prints when a job ends."""
    return (
        f"wrote {summary['rows_ok'] + summary['rows_error']} rows to {path} "
        f"({summary['rows_ok']} ok, {summary['rows_error']} error; "
        f"{summary['prompt_tokens']} prompt + {summary['generated_tokens']} generated tokens "
        f"in {summary['wall_time_s']:.1f}s, {summary['generated_tokens_per_s']:.1f} tok/s)"
        + _resume_note(summary)
    )


def _resume_note(summary: dict) -> str:
    notes = []
    if summary.get("rows_skipped_already_done"):
        notes.append(f"{summary['rows_skipped_already_done']} rows were already done")
    if summary.get("rows_retried"):
        notes.append(f"{summary['rows_retried']} error rows retried")
    if summary.get("prefix_tokens_reused"):
        notes.append(f"{summary['prefix_tokens_reused']} prompt tokens reused from shared prefixes")
    if summary.get("replica_restarts"):
        notes.append(f"{summary['replica_restarts']} replica restart(s)")
    return f"; {', '.join(notes)}" if notes else ""
