"""The output directory: numbered Parquet part files plus a job summary.

Layout: ``<out>/part-00000.parquet``, ``part-00001.parquet``, ... and ``<out>/_job.json``.
Each part is written under a dot-prefixed temp name and renamed into place, so readers never
see a partial file and every part that exists is committed. The summary starts with ``_``
because pyarrow's (and so pandas') directory discovery skips ``.``/``_`` names but fails on
any other non-Parquet file such as ``job.json``. Those three kinds of names are the runner's own
files; it never deletes or replaces any other file in the directory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from runner.errors import OutputError

OUTPUT_COLUMNS = (
    "id",
    "prompt",
    "generation",
    "prompt_tokens",
    "generated_tokens",
    "finish_reason",
    "error",
    "replica",
)
SUMMARY_NAME = "_job.json"
_PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")
_TEMP_RE = re.compile(r"^\.(part-\d{5,}\.parquet|_job\.json|write-probe)\.tmp$")


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


def _atomic_write(fs: pafs.FileSystem, root: str, name: str, write) -> None:
    """Call ``write(temp_path)`` then rename the temp file onto ``name``."""
    temp = f"{root}/.{name}.tmp"
    write(temp)
    fs.move(temp, f"{root}/{name}")


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
    """Row ids already written to part files under ``path`` (empty if there are none)."""
    ids: set[str] = set()
    for column in _part_columns(path, "id"):
        ids.update(column.to_pylist())
    return ids


def _part_columns(path: str, name: str) -> Iterator[pa.ChunkedArray]:
    """One column of each committed part, in part order."""
    fs, root = _filesystem(path)
    for number in _part_numbers(fs, root):
        file = f"{root}/{part_name(number)}"
        try:
            yield pq.read_table(file, columns=[name], filesystem=fs).column(name)
        except (pa.ArrowException, OSError, KeyError) as err:
            raise OutputError(f"output.path: cannot read column '{name}' of {file}: {err}") from None


def write_summary(path: str, summary: dict) -> None:
    """Atomically write the job summary as indented JSON."""
    fs, root = _filesystem(path)
    data = json.dumps(summary, indent=2, sort_keys=True, default=str).encode() + b"\n"

    def write(temp: str) -> None:
        with fs.open_output_stream(temp) as stream:
            stream.write(data)

    fs.create_dir(root, recursive=True)
    _atomic_write(fs, root, SUMMARY_NAME, write)


def read_summary(path: str) -> dict | None:
    """The job summary written by `write_summary`, or None when there is none."""
    fs, root = _filesystem(path)
    file = f"{root}/{SUMMARY_NAME}"
    if fs.get_file_info(file).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(file) as stream:
        raw = stream.read()
    try:
        return json.loads(raw)
    except ValueError as err:
        raise OutputError(f"output.path: {file} is not valid JSON ({err})") from None


class PartWriter:
    """Buffers result tables and commits them as Parquet parts of ``rows_per_file`` rows each.

    Part numbers continue after the highest existing part, so a resumed job appends. Every part
    has the same schema: ``schema`` if given, else the first table's (null-typed columns become
    strings, since an all-null first batch, e.g. ``error``, says nothing about later ones).
    One writer per directory at a time.
    """

    def __init__(self, path: str, rows_per_file: int, schema: pa.Schema | None = None):
        if rows_per_file < 1:
            raise OutputError(f"output.rows_per_file: must be at least 1 (got {rows_per_file})")
        self.fs, self.root = _filesystem(path)
        self.fs.create_dir(self.root, recursive=True)
        self.rows_per_file = rows_per_file
        self.schema = schema
        self.rows_written = 0
        self.files_written: list[str] = []
        self._next = max(_part_numbers(self.fs, self.root), default=-1) + 1
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def write(self, table: pa.Table) -> None:
        """Add rows; every full ``rows_per_file`` rows are committed as one part."""
        if self.schema is None:
            self.schema = _default_schema(table.schema)
        self._buffer.append(_conform(table, self.schema))
        self._buffered += table.num_rows
        while self._buffered >= self.rows_per_file:
            self._flush(self.rows_per_file)

    def close(self) -> None:
        """Commit the buffered remainder as a last, shorter part."""
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
        ``job.json``, is left alone.
        """
        fs, root = _filesystem(path)
        names = _names(fs, root)
        # The summary goes last: killed half way, the directory still says it is the runner's.
        ours = [n for n in names if _PART_RE.match(n) or _TEMP_RE.match(n)]
        ours += [SUMMARY_NAME] if SUMMARY_NAME in names else []
        for name in ours:
            fs.delete_file(f"{root}/{name}")
        return ours

    def _flush(self, rows: int) -> None:
        pending = pa.concat_tables(self._buffer)
        part, rest = pending.slice(0, rows), pending.slice(rows)
        name = self._free_name()
        _atomic_write(self.fs, self.root, name, lambda temp: pq.write_table(part, temp, filesystem=self.fs))
        self.files_written.append(f"{self.root}/{name}")
        self.rows_written += rows
        self._buffer, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def _free_name(self) -> str:
        # Never rename over an existing part (rename would silently replace committed rows).
        while self.fs.get_file_info(f"{self.root}/{part_name(self._next)}").type != pafs.FileType.NotFound:
            self._next += 1
        self._next += 1
        return part_name(self._next - 1)


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
