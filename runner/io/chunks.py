"""Planning a streamed read: which files, their columns, and chunks whose first row position is known.

The driver lists the files (local paths and globs, or a pyarrow filesystem URI: `s3://`, `gs://`),
reads the first file's columns from its footer, header or first lines, and splits each file into
chunks: a Parquet row group (row counts from the footer), about CHUNK_BYTES of JSON Lines ending at a
newline (rows counted by one streaming scan, in C unless a chunk has blank lines), a whole CSV file
(rows counted by pyarrow's streaming reader), a whole JSON array file. Knowing each chunk's first
row position is what makes position ids the same as a full read's. Memory: one read buffer.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv
import pyarrow.fs as pafs
import pyarrow.json
import pyarrow.parquet as pq

from runner.errors import InputError, first_line
from runner.io import inputs
from runner.io.outputs import INPUT_ERROR
from runner.io.rows import jsonl_rows

HEAD_BYTES = 1 << 20  # what the driver reads of the first file to learn its columns
CHUNK_BYTES = 64 << 20  # one JSON Lines read task: big enough to amortise a task, small enough to stream


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


def _resolve_uri(source: str, fmt: str) -> tuple[str, pafs.FileSystem, list[str]]:
    try:
        fs, root = pafs.FileSystem.from_uri(source)
        info = fs.get_file_info(root)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(
            f"data.source: cannot open {source}: {first_line(err, type(err).__name__)}"
        ) from None
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
            raise InputError(
                f"data.source: cannot read {path} as {fmt}: {first_line(err, type(err).__name__)}"
            ) from None
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
        with fs.open_input_stream(path) as stream:
            if inputs.is_blank(stream.read(1 << 10)) and not stream.read(1):
                return []  # an empty file: no rows, as an empty JSON Lines file
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


def _may_have_blank_lines(body: bytes) -> bool:
    # A blank line starts with a newline or whitespace: substring searches in C, 10x a regex scan.
    core = body[:-1] if body.endswith(b"\n") else body
    if core[:1] in (b"\n", b" ", b"\t", b"\r"):
        return True
    return any(pattern in core for pattern in (b"\n\n", b"\n ", b"\n\t", b"\n\r")) or core.endswith(b"\n")


def _count_lines(body: bytes) -> tuple[int, int]:
    """(lines, non-blank lines) of a chunk; counted in C unless the chunk has a blank line."""
    lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
    if (
        not _may_have_blank_lines(body)
        or _BLANK_LINE.search(body[:-1] if body.endswith(b"\n") else body) is None
    ):
        return lines, lines
    return lines, sum(1 for text in body.split(b"\n")[:lines] if text.strip())


def _csv_reader(fs: pafs.FileSystem, path: str):
    with fs.open_input_stream(path) as stream:
        head = stream.read(1 << 20)
    inputs.check_text(head, path)
    # utf-8-sig: pyarrow drops a byte-order mark from the first column's name, so must we.
    header = head.split(b"\n", 1)[0].decode("utf-8-sig", "replace")
    names = next(iter(csv.reader([header])), [])
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
    head = _jsonl_head(fs, path)
    inputs.check_text(head, path)
    return inputs.some_objects(_parse_jsonl(head, os.path.basename(path), 1), path)


def _jsonl_head(fs: pafs.FileSystem, path: str) -> bytes:
    """The file's first whole lines, at least one that is not blank however long it is (a long
    document), read HEAD_BYTES at a time."""
    pieces = []
    with fs.open_input_stream(path) as stream:
        while piece := stream.read(HEAD_BYTES):
            pieces.append(piece)
            if b"\n" in piece:
                head = b"".join(pieces)
                cut = head.rfind(b"\n") + 1
                if head[:cut].strip():
                    return head[:cut]
    return b"".join(pieces)


def _parse_jsonl(data: bytes, name: str, first_number: int) -> pa.Table:
    try:
        return inputs.read_json_lines(data, len(data))
    except pa.ArrowInvalid:  # a bad line or a type change: row by row, bad rows become error rows
        return jsonl_rows(data.split(b"\n"), name, first_number)
