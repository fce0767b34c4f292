"""The output directory: numbered Parquet part files plus a job summary.

Layout: ``<out>/part-00000.parquet``, ``part-00001.parquet``, ... and ``<out>/_job.json``.
Each part is written under a dot-prefixed temp name unique to its writer and linked into place
(never over an existing part), so readers never see a partial file; which parts count for the job
(a superseded lease holder's late part does not) is `runner.io.catalogue`'s. On a local disk the part is fsynced before the rename and the directory after it, so a
committed part survives a power loss or a lost node, not only a killed process. The summary starts with ``_``
because pyarrow's (and so pandas') directory discovery skips ``.``/``_`` names but fails on
any other non-Parquet file such as ``job.json``. Those three kinds of names are the runner's own
files; it never deletes or replaces any other file in the directory.

Every function here takes the directory as its filesystem handle and root (`runner.io.jobdir.JobDir`
holds them and hands them over), never as a path to resolve again.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from runner.errors import OutputError
from runner.io.catalogue import GENERATION_KEY, PART_RE, Catalogue, part_name
from runner.io.durable import atomic_write

# The column names, defined with their types in runner.io.output_schema; readers import them from here.
from runner.io.output_schema import OPTIONAL_COLUMNS, OUTPUT_COLUMNS  # noqa: F401
from runner.io.summary import PREFIX_REUSED_KEY

log = logging.getLogger(__name__)

INPUT_ERROR = "_input_error"  # an input column a reader adds when a row could not be read as data
ERROR_KINDS = ("row", "engine")  # error_kind: the row's own fault, or the infrastructure's (retryable)
SUMMARY_NAME = "_job.json"
# Temp names carry the writer's token (`.part-00042.parquet.<hex>.tmp`), so two writers never share one.
_TEMP_RE = re.compile(r"^\.(part-\d{5,}\.parquet|_job\.json|write-probe)(\.[0-9a-f]{8,})?\.tmp$")


def _names(fs: pafs.FileSystem, root: str) -> list[str]:
    """File names directly in root; empty when root does not exist."""
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(root))
    return [info.base_name for info in infos if info.type == pafs.FileType.File]


def prepare_output_dir(fs: pafs.FileSystem, root: str, path: str, remove_temps: bool = True) -> None:
    """Create the output directory `root` on `fs` (`path`, as the user gave it, names it in errors),
    check it is writable and (`remove_temps`) remove temp files a crash left. Only the directory's
    lease holder removes them: that removal is what stops a superseded writer's late commit
    (`runner.io.durable.atomic_write`)."""
    if fs.get_file_info(root).type == pafs.FileType.File:
        raise OutputError(f"output.path: {path} is a file, not a directory")
    try:
        fs.create_dir(root, recursive=True)
        fs.open_output_stream(f"{root}/.write-probe.tmp").close()
        fs.delete_file(f"{root}/.write-probe.tmp")
    except OSError as err:
        raise OutputError(f"output.path: {path} is not writable ({err})") from None
    if remove_temps:
        remove_temp_files(fs, root)


def remove_temp_files(fs: pafs.FileSystem, root: str) -> None:
    """Delete the runner's temp files in root (a crashed or superseded writer's)."""
    for name in _names(fs, root):
        if _TEMP_RE.match(name):  # only our own temp names: never delete a user's file
            try:
                fs.delete_file(f"{root}/{name}")
            except FileNotFoundError:  # its writer finished meanwhile
                pass


def write_json(
    fs: pafs.FileSystem, root: str, name: str, document: dict, fence: Callable | None = None
) -> None:
    """Atomically (and durably, on a local disk) write a document of the directory as indented JSON;
    `fence` (the lease's check) runs right before it is renamed into place."""
    data = json.dumps(document, indent=2, sort_keys=True, default=str).encode() + b"\n"

    def write(temp: str) -> None:
        with fs.open_output_stream(temp) as stream:
            stream.write(data)

    fs.create_dir(root, recursive=True)
    atomic_write(fs, root, name, write, fence=fence)


def read_json(fs: pafs.FileSystem, root: str, name: str) -> dict | None:
    """A document written by `write_json`, or None when there is none; ValueError (naming the file)
    when it is not valid JSON."""
    file = f"{root}/{name}"
    if fs.get_file_info(file).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(file) as stream:
        raw = stream.read()
    try:
        return json.loads(raw)
    except ValueError as err:
        raise ValueError(f"{file} is not valid JSON ({err})") from None


def write_summary(fs: pafs.FileSystem, root: str, summary: dict, fence: Callable | None = None) -> None:
    """Atomically write the job summary as indented JSON (after `fence`, the lease's check)."""
    write_json(fs, root, SUMMARY_NAME, summary, fence)


def read_summary(fs: pafs.FileSystem, root: str) -> dict | None:
    """The job summary written by `write_summary`, or None when there is none."""
    try:
        return read_json(fs, root, SUMMARY_NAME)
    except ValueError as err:
        raise OutputError(f"output.path: {err}") from None


class PartWriter:
    """Buffers result tables and commits them as Parquet parts of at most ``rows_per_file`` rows.

    A part is committed when ``rows_per_file`` rows are buffered, and also when the oldest buffered
    row has waited ``flush_seconds`` (checked on every write and by `flush_due`, which a job calls
    from a timer): a killed driver loses about that much work, not ``rows_per_file`` rows.
    Part numbers continue after the highest existing part (and from ``first_number``, the lease's,
    when higher), so a resumed job appends; a commit never replaces an existing part. Every part has the same schema: ``schema`` if given, else the first
    table's (null-typed columns become strings, since an all-null first batch, e.g. ``error``, says
    nothing about later ones). ``generation`` (the lease's) is written into each part's metadata and
    ``fence`` (the lease's check) runs right before each part is linked into place: a part written
    under a lease that was meanwhile taken over is never committed (`runner.io.catalogue`).
    """

    def __init__(
        self,
        fs: pafs.FileSystem,
        root: str,
        rows_per_file: int,
        schema: pa.Schema | None = None,
        flush_seconds: float | None = None,
        fence: Callable | None = None,
        generation: int | None = None,
        first_number: int = 0,
    ):
        if rows_per_file < 1:
            raise OutputError(f"output.rows_per_file: must be at least 1 (got {rows_per_file})")
        self.fs, self.root = fs, root
        self.fs.create_dir(self.root, recursive=True)
        self.rows_per_file = rows_per_file
        self.flush_seconds = flush_seconds
        self.fence = fence
        self.generation = generation
        self.schema = None if schema is None else self._tagged(schema)
        self.rows_written = 0
        self.files_written: list[str] = []
        self._next = max(max(Catalogue(self.fs, self.root).numbers(), default=-1) + 1, first_number)
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._oldest: float | None = None  # monotonic time the oldest buffered row arrived
        self._lock = threading.Lock()  # `flush_due` runs on a timer thread

    def write(self, table: pa.Table) -> None:
        """Add rows; every full ``rows_per_file`` rows are committed as one part."""
        with self._lock:
            if self.schema is None:
                self.schema = self._tagged(_default_schema(table.schema))
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
    def remove_parts(fs: pafs.FileSystem, root: str) -> list[str]:
        """Delete the runner's own files in ``root`` (parts, their temp files, the summary); return them.

        Only those exact name patterns go: a user's file next to them, even ``part-1.parquet`` or
        ``job.json``, is left alone. The lease stays: the caller holds it.
        """
        names = _names(fs, root)
        # The summary goes last: killed half way, the directory still says it is the runner's.
        ours = [n for n in names if PART_RE.match(n) or _TEMP_RE.match(n)]
        ours += [SUMMARY_NAME] if SUMMARY_NAME in names else []
        for name in ours:
            fs.delete_file(f"{root}/{name}")
        return ours

    def _tagged(self, schema: pa.Schema) -> pa.Schema:
        if self.generation is None:
            return schema
        return schema.with_metadata(
            {**(schema.metadata or {}), GENERATION_KEY: str(self.generation).encode()}
        )

    def _flush_if_due(self) -> None:
        if self.flush_seconds is None or self._oldest is None or not self._buffered:
            return
        if time.monotonic() - self._oldest >= self.flush_seconds:
            self._flush(self._buffered)

    def _flush(self, rows: int) -> None:
        if self.fence is not None:  # before the write too: a lost lease costs no Parquet encoding
            self.fence()
        pending = pa.concat_tables(self._buffer)
        part, rest = pending.slice(0, rows), pending.slice(rows)
        while True:
            name = part_name(self._next)
            self._next += 1
            write = lambda temp: pq.write_table(part, temp, filesystem=self.fs)  # noqa: E731
            if atomic_write(self.fs, self.root, name, write, replace=False, fence=self.fence):
                break
        self.files_written.append(f"{self.root}/{name}")
        self.rows_written += rows
        self._buffer, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows
        self._oldest = time.monotonic() if rest.num_rows else None


# Batch metadata the stage sends to the driver only (runner.io.summary: a replica's running counts), never
# written into part files.
_DRIVER_ONLY_METADATA = (PREFIX_REUSED_KEY,)


def _default_schema(schema: pa.Schema) -> pa.Schema:
    fields = [f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema]
    metadata = {k: v for k, v in (schema.metadata or {}).items() if k not in _DRIVER_ONLY_METADATA}
    return pa.schema(fields, metadata=metadata or None)


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
