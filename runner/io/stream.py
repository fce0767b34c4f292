"""Streaming input: the input files become Ray Data read tasks, so the driver never holds the rows.

The driver only plans: it lists the files (local paths, globs, or pyarrow filesystem URIs such as
`s3://` and `gs://`), reads the columns from the first file's head, and splits each file into
chunks whose first row position it knows (Parquet: row groups from the footer; JSON Lines: byte
ranges ending at a newline, rows counted by one streaming scan; CSV: one chunk per file, rows
counted by pyarrow's streaming reader). Ray Data runs one read task per chunk on the workers, with
backpressure; each task parses its chunk, conforms it to the first file's columns, adds the row
`id` and drops rows already committed (an Arrow hash lookup in the done ids, shipped once through
the object store). Driver memory is the plan, not the data: flat in the number of input rows.

Ids are the same as a full read gives (`runner.io.inputs.read_input`): `data.id_column` cast to
string, or the row's position in sorted-file order, zero-padded, so resuming output written by an
earlier version still matches. Our own datasource rather than `ray.data.read_json/read_parquet`:
those do not say which position in which file a row came from, and position ids need it.

Saved (`save_to_disk`) and hub datasets are memory-mapped Arrow through `datasets`; they are sliced
into blocks of that table.
"""

from __future__ import annotations

import functools
import io
import os
import re
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
from runner.io.outputs import INPUT_ERROR

CHUNK_BYTES = 64 << 20  # one JSON Lines read task: big enough to amortise a task, small enough to stream
BLOCK_ROWS = 8192


@dataclass(frozen=True)
class Chunk:
    """A piece of one input file a read task reads: its rows start at global position `first_row`."""

    path: str
    fmt: str
    first_row: int
    rows: int
    start: int = 0  # JSON Lines: byte offset; Parquet: row group index
    end: int = 0  # JSON Lines: byte offset of the end
    first_line: int = 1  # JSON Lines: line number of the first line, for error messages


@dataclass
class StreamedInput:
    """The planned input: columns, chunks, row count; `dataset()` is the lazy Ray Dataset of its rows."""

    cfg: DataConfig
    fs: pafs.FileSystem | None
    chunks: list[Chunk]
    columns: pa.Schema  # the data columns (first file), before `id` is added
    table: pa.Table | None = None  # saved and hub datasets: memory-mapped Arrow

    @property
    def total_rows(self) -> int:
        rows = self.table.num_rows if self.table is not None else sum(c.rows for c in self.chunks)
        return min(rows, self.cfg.limit) if self.cfg.limit is not None else rows

    @property
    def num_rows(self) -> int:  # so a job can treat it as it treats a table
        return self.total_rows

    def dataset(self, done_ids: pa.Array | None = None, block_rows: int = BLOCK_ROWS):
        """A Ray Dataset of the rows not in `done_ids`, `id` first; read on the workers as consumed."""
        import ray
        import ray.data

        done_ref = ray.put(done_ids) if done_ids is not None and len(done_ids) else None
        width = inputs._id_width(self.total_rows)
        plan = _Plan(self.cfg, self.columns, width, done_ref, self.fs, block_rows=block_rows)
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
        fs = pafs.LocalFileSystem()
    if fmt in ("saved", "hub"):
        table = inputs._read_source(cfg)
        planned = StreamedInput(cfg, None, [], table.schema, table=table)
    else:
        chunks = _chunks(fs, files, fmt, cfg.limit)
        planned = StreamedInput(cfg, fs, chunks, _head_columns(fs, files[0], fmt))
    _check_planned_columns(planned)
    return planned


def _check_planned_columns(planned: StreamedInput) -> None:
    cfg, names = planned.cfg, [n for n in planned.columns.names if n != INPUT_ERROR]
    head = pa.table({n: pa.nulls(0, planned.columns.field(n).type) for n in names})
    inputs._check_columns(inputs._with_ids(head, cfg.id_column), cfg)


def _resolve_uri(source: str, fmt: str) -> tuple[str, pafs.FileSystem, list[str]]:
    try:
        fs, root = pafs.FileSystem.from_uri(source)
        info = fs.get_file_info(root)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"data.source: cannot open {source}: {inputs._first_line(err)}") from None
    if info.type == pafs.FileType.File:
        files = [root]
    elif info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(root))
        files = sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and not i.base_name.startswith((".", "_"))
            and inputs._ext_format(i.base_name) is not None
        )
        if fmt not in ("auto",):
            files = [f for f in files if inputs._ext_format(f) == fmt]
        if not files:
            raise InputError(f"data.source: no data files in {source}")
    else:
        raise InputError(f"data.source: no such file or directory: {source}")
    return (inputs._format_of(files) if fmt == "auto" else fmt), fs, files


def _chunks(fs: pafs.FileSystem, files: list[str], fmt: str, limit: int | None) -> list[Chunk]:
    chunks: list[Chunk] = []
    row = 0
    for path in files:
        try:
            planned = _file_chunks(fs, path, fmt, row, limit)
        except (pa.ArrowException, OSError, ValueError) as err:
            raise InputError(f"data.source: cannot read {path} as {fmt}: {inputs._first_line(err)}") from None
        chunks += planned
        row += sum(c.rows for c in planned)
        if limit is not None and row >= limit:
            break  # later files cannot contribute to the first `limit` rows
    return chunks


def _file_chunks(fs: pafs.FileSystem, path: str, fmt: str, row: int, limit: int | None = None) -> list[Chunk]:
    if fmt == "parquet":
        meta = pq.ParquetFile(fs.open_input_file(path)).metadata
        out = []
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            out.append(Chunk(path, fmt, row, rows, start=group))
            row += rows
        return out
    if fmt == "jsonl" or (fmt == "json" and not _is_json_array(fs, path)):
        return _jsonl_chunks(fs, path, row, limit)
    if fmt == "csv":
        rows = sum(b.num_rows for b in _csv_reader(fs, path))
        return [Chunk(path, fmt, row, rows)]
    table = inputs._read_json(path)  # a top-level JSON array: one document, read whole
    return [Chunk(path, "json", row, table.num_rows)]


def _is_json_array(fs: pafs.FileSystem, path: str) -> bool:
    with fs.open_input_stream(path) as stream:
        return stream.read(4096).lstrip().startswith(b"[")


def _jsonl_chunks(fs: pafs.FileSystem, path: str, row: int, limit: int | None = None) -> list[Chunk]:
    """Byte ranges of about CHUNK_BYTES ending at a newline, with their non-blank line counts; the
    scan stops once `limit` rows are planned."""
    out: list[Chunk] = []
    start = offset = 0
    line = 1
    carry = b""
    with fs.open_input_stream(path) as stream:
        while True:
            block = stream.read(CHUNK_BYTES)
            data = carry + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            body, carry = data[:cut], data[cut:]
            offset += len(body)
            if body:
                lines, rows = _count_lines(body)
                out.append(Chunk(path, "jsonl", row, rows, start=start, end=offset, first_line=line))
                row, line, start = row + rows, line + lines, offset
            if not block or (limit is not None and row >= limit):
                return out


_BLANK_LINE = re.compile(rb"(?:^|\n)[ \t\r]*(?:\n|\Z)")


def _count_lines(body: bytes) -> tuple[int, int]:
    """(lines, non-blank lines) of a chunk; counted in C unless the chunk has a blank line."""
    lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
    if _BLANK_LINE.search(body[:-1] if body.endswith(b"\n") else body) is None:
        return lines, lines
    return lines, sum(1 for text in body.split(b"\n")[:lines] if text.strip())


def _csv_reader(fs: pafs.FileSystem, path: str):
    with fs.open_input_stream(path) as stream:
        header = stream.read(1 << 20).split(b"\n", 1)[0].decode("utf-8", "replace")
    names = next(iter(__import__("csv").reader([header])), [])
    options = pyarrow.csv.ConvertOptions(column_types={name: pa.string() for name in names})
    return pyarrow.csv.open_csv(fs.open_input_stream(path), convert_options=options)


def _head_columns(fs: pafs.FileSystem, path: str, fmt: str) -> pa.Schema:
    """The first file's columns, from its footer, header, or first lines; null types become text."""
    if fmt == "parquet":
        schema = pq.ParquetFile(fs.open_input_file(path)).schema_arrow
    elif fmt == "csv":
        schema = _csv_reader(fs, path).schema
    else:
        first = _jsonl_chunks_head(fs, path)
        schema = first.schema
    fields = [f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema]
    fields = [f for f in fields if f.name != INPUT_ERROR] + [pa.field(INPUT_ERROR, pa.string())]
    return pa.schema(fields)


def _jsonl_chunks_head(fs: pafs.FileSystem, path: str) -> pa.Table:
    if fs.get_file_info(path).size and _is_json_array(fs, path):
        return inputs._read_json(path)
    with fs.open_input_stream(path) as stream:
        head = stream.read(1 << 20)
    head = head[: head.rfind(b"\n") + 1] or head
    return _parse_jsonl(head, os.path.basename(path), 1)


def _parse_jsonl(data: bytes, name: str, first_line: int) -> pa.Table:
    try:
        return pyarrow.json.read_json(io.BytesIO(data))
    except pa.ArrowInvalid:  # a bad line or a type change: row by row, bad rows become error rows
        return inputs.jsonl_rows(data.split(b"\n"), name, first_line)


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
        return _parse_jsonl(data, os.path.basename(chunk.path), chunk.first_line)
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


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, so every block of the input has one schema: a column
    a chunk lacks is null; a value that does not fit its column's type is nulled and its row gets
    an input error naming the column (a JSON Lines column that changes type between chunks)."""
    errors = table.column(INPUT_ERROR).combine_chunks() if INPUT_ERROR in table.column_names else None
    errors = errors if errors is not None else pa.nulls(table.num_rows, pa.string())
    columns = []
    for field in schema:
        if field.name == INPUT_ERROR:
            columns.append(None)
            continue
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            fixed, errors = _cast_values(column, field, errors)
            columns.append(fixed)
    columns[schema.get_field_index(INPUT_ERROR)] = errors
    return pa.Table.from_arrays(columns, schema=schema)


def _cast_values(column: pa.ChunkedArray, field: pa.Field, errors: pa.Array) -> tuple[pa.Array, pa.Array]:
    values, messages = [], errors.to_pylist()
    for i, value in enumerate(column.to_pylist()):
        try:
            values.append(pa.array([value]).cast(field.type)[0].as_py() if value is not None else None)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            values.append(None)
            kind, other = inputs._kind(value), _type_kind(field.type)
            messages[i] = (
                messages[i] or f"column {field.name!r} is {kind} {value!r:.40}, other rows hold {other}"
            )
    return pa.array(values, field.type), pa.array(messages, pa.string())


def _type_kind(kind: pa.DataType) -> str:
    """The JSON kind of an Arrow type, as `inputs._kind` names a value's."""
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "number"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "str"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return "list"
    return "dict" if pa.types.is_struct(kind) else str(kind)


class _Source:
    """A Ray Data datasource of our chunks (`ray.data.Datasource`'s public interface)."""

    def __new__(cls, plan: _Plan, chunks: list[Chunk]):
        from ray.data import Datasource, ReadTask
        from ray.data.block import BlockMetadata  # a Ray DeveloperAPI: how a ReadTask states its size

        class ChunkSource(Datasource):
            def estimate_inmemory_data_size(self):
                return None

            def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
                return [
                    ReadTask(
                        functools.partial(_read_chunk, plan, chunk),
                        BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None),
                    )
                    for chunk in chunks
                ]

        return ChunkSource()
