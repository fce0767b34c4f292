"""Streaming input: the input files become Ray Data read tasks, so the driver never holds the rows.

The driver only plans (`runner.io.chunks`: the files, the first file's columns, chunks whose first row
position is known). Ray Data runs one read task per chunk on the workers, with backpressure; each task
parses its chunk, conforms it to the first file's columns (`runner.io.rows`), adds the row `id` and
drops rows already committed (an Arrow hash lookup against the committed ids in the chunk's id range,
shipped once through the object store). Driver memory is the plan, not the data.

Ids are the same as a full read gives (`runner.io.inputs.read_input`): `data.id_column` cast to
string, or the row's position in sorted-file order, zero-padded, so resuming output written by an
earlier version still matches. Our own datasource rather than `ray.data.read_json/read_parquet`:
those do not say which position in which file a row came from, and position ids need it.

Saved (`save_to_disk`) and hub datasets are memory-mapped Arrow through `datasets`; they are sliced
into blocks of that table.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.fs as pafs
import pyarrow.json
import pyarrow.parquet as pq

from runner.config import DataConfig
from runner.errors import InputError
from runner.io import inputs
from runner.io.chunks import Chunk, _chunks, _csv_reader, _head_columns, _parse_jsonl, _resolve_uri
from runner.io.outputs import INPUT_ERROR
from runner.io.rows import conform

BLOCK_ROWS = 8192
# An input this small is read on the driver (the same read-task body, run in-process) and handed to
# Ray Data as ready blocks: read tasks would start only once every replica has loaded its model
# (the pool waits for its actors before dispatching) and need a worker of their own, seconds of a
# short job's start-up; a few thousand rows of prompts are little memory.
SMALL_INPUT_ROWS = 4096


@dataclass
class StreamedInput:
    """The planned input: columns, chunks, row count; `dataset()` is the lazy Ray Dataset of its rows."""

    cfg: DataConfig
    fs: pafs.FileSystem | None
    chunks: list[Chunk]
    columns: pa.Schema  # the data columns (first file), before `id` is added
    table: pa.Table | None = None  # saved and hub datasets: memory-mapped Arrow
    # A JSON Lines format of its own (an OpenAI batch request file): (bytes, file name, first line
    # number) -> a table in `columns`; a module-level function, so read tasks can pickle it.
    parse: Callable[[bytes, str, int], pa.Table] | None = None

    @property
    def total_rows(self) -> int:
        rows = self.table.num_rows if self.table is not None else sum(c.rows for c in self.chunks)
        return min(rows, self.cfg.limit) if self.cfg.limit is not None else rows

    @property
    def num_rows(self) -> int:  # so a job can treat it as it treats a table
        return self.total_rows

    def dataset(self, done_ids: pa.Array | None = None, block_rows: int = BLOCK_ROWS):
        """A Ray Dataset of the rows not in `done_ids`, `id` first; read on the workers as consumed
        (a small input: read here, `SMALL_INPUT_ROWS`)."""
        import ray
        import ray.data

        done_ref = ray.put(done_ids) if done_ids is not None and len(done_ids) else None
        width = inputs._id_width(self.total_rows)
        plan = _Plan(
            self.cfg, self.columns, width, done_ref, self.fs, block_rows=block_rows, parse=self.parse
        )
        if self.table is not None:
            chunks = [
                Chunk("", "table", i, min(BLOCK_ROWS * 8, self.table.num_rows - i))
                for i in range(0, self.table.num_rows, BLOCK_ROWS * 8)
            ]
            plan.table_ref = ray.put(self.table)
        else:
            chunks = self.chunks
        if self.cfg.limit is not None:
            chunks = [c for c in chunks if c.first_row < self.cfg.limit]
        if self.total_rows <= SMALL_INPUT_ROWS:
            blocks = [block for chunk in chunks for block in _read_chunk(plan, chunk)]
            if blocks:
                return ray.data.from_blocks(blocks)
        ds = ray.data.read_datasource(_Source(plan, chunks), override_num_blocks=max(1, len(chunks)))
        # A read task's output is merged into blocks of up to Ray Data's target size (128 MB); cut it
        # back to `block_rows` (streaming), so every replica gets batches from the first one on.
        return ds.repartition(target_num_rows_per_block=block_rows)


def open_input(cfg: DataConfig) -> StreamedInput:
    """Plan reading `cfg.source` and check its columns (one line naming the field), reading no rows
    beyond the first file's head."""
    inputs._check_carry_clashes(cfg)
    if "://" in cfg.source:
        fmt, fs, files = _resolve_uri(cfg.source, cfg.format)
    else:
        fmt, files = inputs._resolve(cfg.source, cfg.format)
        # Absolute from here on: a job's driver runs in Ray's unpacked copy of its working_dir, which
        # the runtime-env agent of another node on the same machine (or another job's set-up) may
        # replace while the job runs; a relative read then fails under a deleted working directory.
        files = [os.path.abspath(f) for f in files]
        fs = pafs.LocalFileSystem()
    if fmt in ("saved", "hub"):
        table = inputs._read_source(cfg)
        planned = StreamedInput(cfg, None, [], table.schema, table=table)
    else:
        chunks = _chunks(fs, files, fmt, cfg.limit)
        # The columns come from the first file with rows: an empty shard of a glob says nothing.
        head = next((c.path for c in chunks if c.rows), None)
        planned = StreamedInput(cfg, fs, chunks, _head_columns(fs, head, fmt) if head else pa.schema([]))
    if planned.total_rows == 0:
        raise InputError(f"data.source: {cfg.source} is empty: no rows to run")
    _check_planned_columns(planned)
    return planned


def _check_planned_columns(planned: StreamedInput) -> None:
    cfg, names = planned.cfg, [n for n in planned.columns.names if n != INPUT_ERROR]
    head = pa.table({n: pa.nulls(0, planned.columns.field(n).type) for n in names})
    inputs._check_columns(inputs._with_ids(head, cfg.id_column), cfg)


@dataclass
class _Plan:
    """What every read task needs: the config, the columns, the id width, the done ids."""

    cfg: DataConfig
    columns: pa.Schema
    id_width: int
    done_ref: object | None
    fs: pafs.FileSystem | None
    table_ref: object | None = None
    block_rows: int = BLOCK_ROWS
    parse: Callable[[bytes, str, int], pa.Table] | None = None


def _read_chunk(plan: _Plan, chunk: Chunk):
    """A read task's body: the chunk's rows as blocks, `id` first, committed rows dropped."""
    table = _finish(plan, _load(plan, chunk), chunk.first_row)
    if plan.done_ref is not None and table.num_rows:
        table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=_done_in_range(plan, table))))
    for offset in range(0, table.num_rows, plan.block_rows):
        yield table.slice(offset, plan.block_rows)


def _done_in_range(plan: _Plan, table: pa.Table) -> pa.Array:
    """The committed ids between this chunk's smallest and largest id: a linear scan, so the hash set
    `is_in` builds holds about a chunk's ids, not all of the job's (10 M)."""
    import ray

    done = ray.get(plan.done_ref)
    bounds = pc.min_max(table.column("id"))
    inside = pc.and_(pc.greater_equal(done, bounds["min"]), pc.less_equal(done, bounds["max"]))
    return done.filter(inside)


def _load(plan: _Plan, chunk: Chunk) -> pa.Table:
    fs = plan.fs
    if chunk.fmt == "table":
        import ray

        return ray.get(plan.table_ref).slice(chunk.first_row, chunk.rows)
    if chunk.fmt == "parquet":
        return pq.ParquetFile(fs.open_input_file(chunk.path)).read_row_group(chunk.start)
    if chunk.fmt == "jsonl":
        with fs.open_input_file(chunk.path) as handle:
            handle.seek(chunk.start)
            data = handle.read(chunk.end - chunk.start)
        return (plan.parse or _parse_jsonl)(data, os.path.basename(chunk.path), chunk.first_line)
    if chunk.fmt == "csv":
        return _csv_reader(fs, chunk.path).read_all()
    return inputs._read_json(chunk.path)


def _finish(plan: _Plan, table: pa.Table, first_row: int) -> pa.Table:
    """A chunk's rows within `data.limit`, in the input's columns, with their ids first."""
    cfg = plan.cfg
    if cfg.limit is not None and first_row + table.num_rows > cfg.limit:
        table = table.slice(0, max(0, cfg.limit - first_row))
    table = conform(table, plan.columns)
    if cfg.id_column is None:
        positions = pa.array(np.arange(first_row, first_row + table.num_rows, dtype=np.int64)).cast(
            pa.string()
        )
        ids = pc.utf8_lpad(positions, width=plan.id_width, padding="0")
        return table.add_column(0, "id", ids)
    return _ids_from_column(table, cfg.id_column, first_row, plan.id_width)


def _ids_from_column(table: pa.Table, name: str, first_row: int, width: int) -> pa.Table:
    ids = table.column(name).cast(pa.string())
    missing = pc.is_null(ids)
    if pc.any(missing).as_py():  # a row without an id (or an unparsable line): named by its position
        positions = pa.array(np.arange(first_row, first_row + table.num_rows, dtype=np.int64)).cast(
            pa.string()
        )
        fallback = pc.binary_join_element_wise("input-error-row-", pc.utf8_lpad(positions, width, "0"), "")
        errors = pc.if_else(
            pc.and_(missing, pc.is_null(table.column(INPUT_ERROR))),
            pa.scalar(f"column {name!r} (data.id_column) is null"),
            table.column(INPUT_ERROR),
        )
        table = table.set_column(table.schema.get_field_index(INPUT_ERROR), INPUT_ERROR, errors)
        ids = pc.if_else(missing, fallback, ids)
    return table.drop_columns([name]).add_column(0, "id", ids)


class _Source:
    """A Ray Data datasource of our chunks (`ray.data.Datasource`'s public interface)."""

    def __new__(cls, plan: _Plan, chunks: list[Chunk]):
        from ray.data import Datasource, ReadTask

        from runner import compat

        class ChunkSource(Datasource):
            def estimate_inmemory_data_size(self):
                return None

            def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
                return [
                    ReadTask(
                        functools.partial(_read_chunk, plan, chunk),
                        compat.read_task_metadata(),
                    )
                    for chunk in chunks
                ]

        return ChunkSource()
