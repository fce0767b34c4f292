"""The output directory: numbered Parquet part files plus a job summary.

Layout: ``<out>/part-00000.parquet``, ``part-00001.parquet``, ... and ``<out>/_job.json``.
Each part is written under a dot-prefixed temp name unique to its writer and renamed into place
(never over an existing part), so readers never see a partial file and every part that exists is
committed. On a local disk the part is fsynced before the rename and the directory after it, so a
committed part survives a power loss or a lost node, not only a killed process. The summary starts with ``_``
because pyarrow's (and so pandas') directory discovery skips ``.``/``_`` names but fails on
any other non-Parquet file such as ``job.json``. Those three kinds of names are the runner's own
files; it never deletes or replaces any other file in the directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from runner.errors import OutputError
from runner.io.durable import atomic_write

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = (
    "id",
    "prompt",
    "generation",
    "prompt_tokens",
    "generated_tokens",
    "finish_reason",
    "error",
    "error_kind",
    "replica",
)
INPUT_ERROR = "_input_error"  # an input column a reader adds when a row could not be read as data
ERROR_KINDS = ("row", "engine")  # error_kind: the row's own fault, or the infrastructure's (retryable)
SUMMARY_NAME = "_job.json"
_PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")
# Temp names carry the writer's token (`.part-00042.parquet.<hex>.tmp`), so two writers never share one.
_TEMP_RE = re.compile(r"^\.(part-\d{5,}\.parquet|_job\.json|write-probe)(\.[0-9a-f]{8,})?\.tmp$")


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it; plain paths are local, URIs go by scheme."""
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise OutputError(f"output.path: cannot open {path}: {err}") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def _names(fs: pafs.FileSystem, root: str) -> list[str]:
    """File names directly in root; empty when root does not exist."""
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(root))
    return [info.base_name for info in infos if info.type == pafs.FileType.File]


def _part_numbers(fs: pafs.FileSystem, root: str) -> list[int]:
    return sorted(int(m.group(1)) for name in _names(fs, root) if (m := _PART_RE.match(name)))


def part_name(number: int) -> str:
    """``part-00042.parquet``."""
    return f"part-{number:05d}.parquet"


def prepare_output_dir(path: str) -> None:
    """Create the output directory, check it is writable and remove temp files a crash left."""
    fs, root = _filesystem(path)
    if fs.get_file_info(root).type == pafs.FileType.File:
        raise OutputError(f"output.path: {path} is a file, not a directory")
    try:
        fs.create_dir(root, recursive=True)
        fs.open_output_stream(f"{root}/.write-probe.tmp").close()
        fs.delete_file(f"{root}/.write-probe.tmp")
    except OSError as err:
        raise OutputError(f"output.path: {path} is not writable ({err})") from None
    for name in _names(fs, root):
        if _TEMP_RE.match(name):  # only our own temp names: never delete a user's file
            fs.delete_file(f"{root}/{name}")


def has_parts(path: str) -> bool:
    """Whether ``path`` holds committed part files."""
    return bool(_part_numbers(*_filesystem(path)))


def error_counts(path: str) -> tuple[int, int]:
    """(rows, rows with an error) over every committed part: the whole job, all runs together."""
    rows = errors = 0
    for column in _part_columns(path, "error"):
        rows, errors = rows + len(column), errors + len(column) - column.null_count
    return rows, errors


def committed_ids(path: str) -> set[str]:
    """Row ids already written to part files under ``path`` (empty if there are none); small outputs."""
    return set(committed_id_array(path).to_pylist())


def committed_id_array(path: str) -> pa.Array:
    """Row ids of every committed part as one Arrow string array: resume's lookup, in Arrow memory."""
    chunks = [chunk for column in _part_columns(path, "id") for chunk in column.cast(pa.string()).chunks]
    if not chunks:
        return pa.array([], pa.string())
    return pa.concat_arrays(chunks)


def distinct_id_count(path: str) -> int:
    """Distinct ids over every committed part (Arrow's hash count, no Python set)."""
    ids = committed_id_array(path)
    return int(pc.count_distinct(ids).as_py()) if len(ids) else 0


def _part_columns(path: str, name: str) -> Iterator[pa.ChunkedArray]:
    """One column of each committed part, in part order."""
    fs, root = _filesystem(path)
    for number in _part_numbers(fs, root):
        file = f"{root}/{part_name(number)}"
        try:
            yield pq.read_table(file, columns=[name], filesystem=fs).column(name)
        except (pa.ArrowException, OSError, KeyError) as err:
            raise OutputError(f"output.path: cannot read column '{name}' of {file}: {err}") from None


def retryable_ids(path: str) -> pa.Array:
    """Ids of committed error rows the infrastructure caused (`error_kind` engine, or no kind: parts
    written before the column existed); a row's own errors would fail the same way again."""
    fs, root = _filesystem(path)
    chunks = []
    for number in _part_numbers(fs, root):
        file = f"{root}/{part_name(number)}"
        names = pq.read_schema(file, filesystem=fs).names
        if "error" not in names:  # a job kind whose rows cannot fail
            continue
        table = pq.read_table(
            file, columns=[c for c in ("id", "error", "error_kind") if c in names], filesystem=fs
        )
        mask = pc.is_valid(table.column("error"))
        if "error_kind" in names:
            mask = pc.and_(mask, pc.invert(pc.fill_null(pc.equal(table.column("error_kind"), "row"), False)))
        chunks += table.filter(mask).column("id").cast(pa.string()).chunks
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())


def drop_rows(path: str, ids: pa.Array) -> int:
    """Remove the rows with these ids from the committed parts; return how many went.

    Each affected part is rewritten atomically (temp file, fsync, rename over it) or deleted when
    nothing is left, one part at a time: a crash half way leaves every row either committed once or
    not committed (so pending, and generated by the next run), never twice."""
    if not len(ids):
        return 0
    fs, root = _filesystem(path)
    dropped = 0
    for number in _part_numbers(fs, root):
        name = part_name(number)
        table = pq.read_table(f"{root}/{name}", filesystem=fs)
        keep = pc.invert(pc.is_in(table.column("id"), value_set=ids))
        kept = table.filter(keep)
        if kept.num_rows == table.num_rows:
            continue
        dropped += table.num_rows - kept.num_rows
        if kept.num_rows:
            write = lambda temp, kept=kept: pq.write_table(kept, temp, filesystem=fs)  # noqa: E731
            atomic_write(fs, root, name, write, replace=True)
        else:
            fs.delete_file(f"{root}/{name}")
    return dropped


def write_json(path: str, name: str, document: dict) -> None:
    """Atomically (and durably, on a local disk) write a document of the directory as indented JSON."""
    fs, root = _filesystem(path)
    data = json.dumps(document, indent=2, sort_keys=True, default=str).encode() + b"\n"

    def write(temp: str) -> None:
        with fs.open_output_stream(temp) as stream:
            stream.write(data)

    fs.create_dir(root, recursive=True)
    atomic_write(fs, root, name, write)


def read_json(path: str, name: str) -> dict | None:
    """A document written by `write_json`, or None when there is none; ValueError (naming the file)
    when it is not valid JSON."""
    fs, root = _filesystem(path)
    file = f"{root}/{name}"
    if fs.get_file_info(file).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(file) as stream:
        raw = stream.read()
    try:
        return json.loads(raw)
    except ValueError as err:
        raise ValueError(f"{file} is not valid JSON ({err})") from None


def write_summary(path: str, summary: dict) -> None:
    """Atomically write the job summary as indented JSON."""
    write_json(path, SUMMARY_NAME, summary)


def read_summary(path: str) -> dict | None:
    """The job summary written by `write_summary`, or None when there is none."""
    try:
        return read_json(path, SUMMARY_NAME)
    except ValueError as err:
        raise OutputError(f"output.path: {err}") from None


class PartWriter:
    """Buffers result tables and commits them as Parquet parts of at most ``rows_per_file`` rows.

    A part is committed when ``rows_per_file`` rows are buffered, and also when the oldest buffered
    row has waited ``flush_seconds`` (checked on every write and by `flush_due`, which a job calls
    from a timer): a killed driver loses about that much work, not ``rows_per_file`` rows.
    Part numbers continue after the highest existing part, so a resumed job appends; a commit never
    replaces an existing part. Every part has the same schema: ``schema`` if given, else the first
    table's (null-typed columns become strings, since an all-null first batch, e.g. ``error``, says
    nothing about later ones). ``before_commit`` (the lease's check) runs before each commit.
    One writer per directory at a time: the directory's lease (`runner.io.lease`) makes it so.
    """

    def __init__(
        self,
        path: str,
        rows_per_file: int,
        schema: pa.Schema | None = None,
        flush_seconds: float | None = None,
        before_commit=None,
    ):
        if rows_per_file < 1:
            raise OutputError(f"output.rows_per_file: must be at least 1 (got {rows_per_file})")
        self.fs, self.root = _filesystem(path)
        self.fs.create_dir(self.root, recursive=True)
        self.rows_per_file = rows_per_file
        self.flush_seconds = flush_seconds
        self.before_commit = before_commit
        self.schema = schema
        self.rows_written = 0
        self.files_written: list[str] = []
        self._next = max(_part_numbers(self.fs, self.root), default=-1) + 1
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._oldest: float | None = None  # monotonic time the oldest buffered row arrived
        self._lock = threading.Lock()  # `flush_due` runs on a timer thread

    def write(self, table: pa.Table) -> None:
        """Add rows; every full ``rows_per_file`` rows are committed as one part."""
        with self._lock:
            if self.schema is None:
                self.schema = _default_schema(table.schema)
            self._buffer.append(_conform(table, self.schema))
            self._buffered += table.num_rows
            if self._oldest is None and table.num_rows:
                self._oldest = time.monotonic()
            while self._buffered >= self.rows_per_file:
                self._flush(self.rows_per_file)
            self._flush_if_due()

    def flush_due(self) -> None:
        """Commit the buffer if its oldest row waited ``flush_seconds`` (safe from another thread)."""
        with self._lock:
            self._flush_if_due()

    def close(self) -> None:
        """Commit the buffered remainder as a last, shorter part."""
        with self._lock:
            if self._buffered:
                self._flush(self._buffered)

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # buffered rows are complete results: keep them even if the caller failed

    @staticmethod
    def remove_parts(path: str) -> list[str]:
        """Delete the runner's own files in ``path`` (parts, their temp files, the summary); return them.

        Only those exact name patterns go: a user's file next to them, even ``part-1.parquet`` or
        ``job.json``, is left alone. The lease stays: the caller holds it.
        """
        fs, root = _filesystem(path)
        names = _names(fs, root)
        # The summary goes last: killed half way, the directory still says it is the runner's.
        ours = [n for n in names if _PART_RE.match(n) or _TEMP_RE.match(n)]
        ours += [SUMMARY_NAME] if SUMMARY_NAME in names else []
        for name in ours:
            fs.delete_file(f"{root}/{name}")
        return ours

    def _flush_if_due(self) -> None:
        if self.flush_seconds is None or self._oldest is None or not self._buffered:
            return
        if time.monotonic() - self._oldest >= self.flush_seconds:
            self._flush(self._buffered)

    def _flush(self, rows: int) -> None:
        if self.before_commit is not None:
            self.before_commit()
        pending = pa.concat_tables(self._buffer)
        part, rest = pending.slice(0, rows), pending.slice(rows)
        while True:
            name = part_name(self._next)
            self._next += 1
            write = lambda temp: pq.write_table(part, temp, filesystem=self.fs)  # noqa: E731
            if atomic_write(self.fs, self.root, name, write, replace=False):
                break
        self.files_written.append(f"{self.root}/{name}")
        self.rows_written += rows
        self._buffer, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows
        self._oldest = time.monotonic() if rest.num_rows else None


def _default_schema(schema: pa.Schema) -> pa.Schema:
    fields = [f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table's columns cast to ``schema``; extra or missing columns are errors, not dropped."""
    extra = [n for n in table.column_names if n not in schema.names]
    missing = [n for n in schema.names if n not in table.column_names]
    if extra or missing:
        raise OutputError(
            f"output: table columns differ from the part schema (extra: {extra}, missing: {missing})"
        )
    columns = []
    for field in schema:
        try:
            columns.append(table.column(field.name).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            got = table.schema.field(field.name).type
            raise OutputError(
                f"output: column '{field.name}' is {got}, cannot cast to {field.type}"
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)
