"""Read the input dataset into one Arrow table whose first column is a stable string ``id``.

Files are read in sorted path order, so position ids are the same on every run over the same
input; resume matches committed output rows by these ids.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq

from runner.config import DataConfig
from runner.config.template import template_variables
from runner.errors import InputError, first_line
from runner.io.outputs import INPUT_ERROR, OPTIONAL_COLUMNS, OUTPUT_COLUMNS
from runner.io.rows import jsonl_rows

EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_ID_WIDTH = 8
_JSON_BLOCK = 1 << 20  # pyarrow's default parse block
_MAX_BLOCK = (1 << 31) - 1  # pyarrow's block size is an int32
_TEXT_PROBE = 1 << 16


def read_input(cfg: DataConfig) -> pa.Table:
    """Read ``cfg.source``, apply ``cfg.limit``, put the row ``id`` first and check configured columns."""
    _check_carry_clashes(cfg)
    table = _read_source(cfg)
    if table.num_rows == 0:
        raise InputError(f"data.source: {cfg.source} is empty: no rows to run")
    if cfg.limit is not None:
        table = table.slice(0, cfg.limit)
    table = _with_ids(table, cfg.id_column)
    _check_columns(table, cfg)
    return table


def required_columns(cfg: DataConfig) -> list[str]:
    """Input columns the job reads: prompt source, template variables, carry and max_new_tokens columns."""
    return list(dict.fromkeys(column for _, column in _column_fields(cfg)))


def _column_fields(cfg: DataConfig) -> list[tuple[str, str]]:
    """(config field, column) pairs, so a missing column's error can name the field that asked for it."""
    prompt = cfg.prompt
    pairs = []
    if prompt.column:
        pairs.append(("data.prompt.column", prompt.column))
    if prompt.messages_column:
        pairs.append(("data.prompt.messages_column", prompt.messages_column))
    if prompt.template:
        pairs += [("data.prompt.template", name) for name in template_variables(prompt.template)]
    pairs += [("data.carry_columns", name) for name in cfg.carry_columns]
    if cfg.max_new_tokens_column:
        pairs.append(("data.max_new_tokens_column", cfg.max_new_tokens_column))
    pairs += [(f"data.{name}", getattr(cfg, name)) for name in cfg.OPTION_COLUMN_FIELDS if getattr(cfg, name)]
    return pairs


def _check_carry_clashes(cfg: DataConfig) -> None:
    for name in cfg.carry_columns:
        if name == "prompt":
            raise InputError("data.carry_columns: 'prompt' is always written to the output; do not carry it")
        if name in OUTPUT_COLUMNS + OPTIONAL_COLUMNS:
            clash = ", ".join(OUTPUT_COLUMNS + OPTIONAL_COLUMNS)
            raise InputError(f"data.carry_columns: '{name}' clashes with an output column ({clash})")
        if name == cfg.id_column:
            raise InputError(f"data.carry_columns: '{name}' is data.id_column; it is written as 'id'")


def _check_columns(table: pa.Table, cfg: DataConfig) -> None:
    present = set(table.column_names)
    for field, column in _column_fields(cfg):
        if column not in present:
            listed = ", ".join(table.column_names)
            raise InputError(f"{field}: column '{column}' not in input (columns: {listed})")


def _read_source(cfg: DataConfig) -> pa.Table:
    fmt, files = _resolve(cfg.source, cfg.format)
    readers = {"saved": _read_saved, "hub": _read_hub}
    if fmt in readers:
        return readers[fmt](os.path.expanduser(cfg.source), cfg.split)
    return _read_files(files, fmt, cfg.limit)


def _resolve(source: str, fmt: str) -> tuple[str, list[str]]:
    """(format, files to read in order); files is empty for saved and hub."""
    source = os.path.expanduser(source)
    if fmt == "hub" or (fmt == "auto" and _looks_like_hub(source)):
        return "hub", []
    if fmt == "saved":
        if not os.path.isdir(source):
            raise InputError(f"data.source: no such directory: {source}")
        return "saved", []
    if glob.has_magic(source):
        files = sorted(p for p in glob.glob(source) if os.path.isfile(p))
        if not files:
            raise InputError(f"data.source: no files match {source}")
    elif os.path.isdir(source):
        if fmt == "auto" and any(os.path.exists(os.path.join(source, m)) for m in _SAVED_MARKERS):
            return "saved", []
        files = _data_files_in(source, fmt)
    elif os.path.isfile(source):
        files = [source]
    else:
        raise InputError(f"data.source: no such file or directory: {source}")
    return (_format_of(files) if fmt == "auto" else fmt), files


def _looks_like_hub(source: str) -> bool:
    """A hub name is not an existing path, not a glob, and carries no data-file extension."""
    path_like = os.path.exists(source) or glob.has_magic(source) or source.startswith((".", "/", "~"))
    return not path_like and _ext_format(source) is None


def _data_files_in(directory: str, fmt: str) -> list[str]:
    # Hidden and underscore files are skipped, as pyarrow does, so an output dir reads as an input.
    names = sorted(n for n in os.listdir(directory) if not n.startswith((".", "_")))
    files = [os.path.join(directory, n) for n in names if _ext_format(n) is not None]
    if fmt != "auto":
        files = [f for f in files if _ext_format(f) == fmt]
    if not files:
        raise InputError(f"data.source: no data files ({', '.join(EXTENSIONS)}) in directory {directory}")
    return files


def _ext_format(path: str) -> str | None:
    return EXTENSIONS.get(Path(path).suffix.lower())


def _format_of(files: list[str]) -> str:
    formats = {_ext_format(f) for f in files}
    if None in formats:
        bad = next(f for f in files if _ext_format(f) is None)
        raise InputError(f"data.format: cannot tell the format of {bad} from its extension; set data.format")
    if len(formats) > 1:
        raise InputError(f"data.source: files of mixed formats ({', '.join(sorted(formats))}); use one")
    return formats.pop()


def _read_files(files: list[str], fmt: str, limit: int | None) -> pa.Table:
    tables, rows = [], 0
    for path in files:
        tables.append(_read_file(path, fmt))
        rows += tables[-1].num_rows
        if limit is not None and rows >= limit:
            break  # later files cannot contribute to the first `limit` rows
    try:
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise InputError(f"data.source: input files have incompatible columns ({err})") from None


def _read_file(path: str, fmt: str) -> pa.Table:
    try:
        if fmt in ("json", "jsonl"):
            return _read_json(path)
        if fmt == "csv":
            return _read_csv(path)
        if fmt == "parquet":
            return pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise InputError(
            f"data.source: cannot read {path} as {fmt}: {first_line(err, type(err).__name__)}"
        ) from None
    raise InputError(f"data.format: '{fmt}' is not a file format (use jsonl, json, csv, parquet)")


def _read_json(path: str) -> pa.Table:
    """JSON Lines via pyarrow; a file holding one top-level array via the json module."""
    with open(path, "rb") as handle:
        check_text(handle.read(_TEXT_PROBE), path)
    with open(path, encoding="utf-8") as handle:
        head = handle.read(4096).lstrip()
        if not head.startswith("["):
            try:
                return read_json_lines(path, os.path.getsize(path))
            except pa.ArrowInvalid:
                # A malformed line or a column whose type changes: read it row by row instead,
                # so each bad line becomes that row's error row rather than a failed job.
                return some_objects(read_jsonl_rows(path), path)
        handle.seek(0)
        rows = json.load(handle)
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError("the top-level array must hold objects (one per row)")
    # from_pylist would keep only the first row's keys; a key missing from a row becomes null.
    keys = dict.fromkeys(key for row in rows for key in row)
    return pa.Table.from_pydict({key: [row.get(key) for row in rows] for key in keys})


def _read_csv(path: str) -> pa.Table:
    # CSV is text: every column is read as a string, so ids like `007` or `NA` stay what they say
    # (inference would make them 7 and null). Per-row option columns parse their numeric text.
    with open(path, "rb") as handle:
        head = handle.read(_TEXT_PROBE)
    check_text(head, path)
    if is_blank(head) and len(head) < _TEXT_PROBE:
        return pa.table({})  # as an empty JSON Lines file: no rows (an input of only these is refused)
    # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name (pyarrow
    # drops it too, so with it kept the first column would miss its read-as-text type).
    with open(path, encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle), [])
    types = {name: pa.string() for name in header}
    return pyarrow.csv.read_csv(path, convert_options=pyarrow.csv.ConvertOptions(column_types=types))


def read_json_lines(source: str | bytes, size: int) -> pa.Table:
    """JSON Lines (a path or the bytes) via pyarrow. Its parse block must hold the longest line and it
    cannot grow one itself, so a longer line (a long document) retries with blocks 4x larger."""
    block = _JSON_BLOCK
    while True:
        data = io.BytesIO(source) if isinstance(source, bytes) else source
        try:
            return pyarrow.json.read_json(data, read_options=pyarrow.json.ReadOptions(block_size=block))
        except pa.ArrowInvalid as err:
            if "straddl" not in str(err) or block > size:
                raise
        block = min(block * 4, size + 1, _MAX_BLOCK)


def is_blank(head: bytes) -> bool:
    """Nothing but a byte-order mark and whitespace: a text file with no rows, not even a header."""
    return not head.removeprefix(b"\xef\xbb\xbf").strip()


def check_text(head: bytes, path: str) -> None:
    """Refuse a text-format input (JSON Lines, CSV) whose first bytes are not UTF-8 text, in one line,
    rather than reading it as rows of garbage."""
    if b"\0" in head:
        raise InputError(f"data.source: {path} is not text (a NUL byte at offset {head.index(0)})")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut by the end of the probe
            byte = head[err.start : err.start + 1].hex()
            raise InputError(
                f"data.source: {path} is not UTF-8 text (byte 0x{byte} at offset {err.start})"
            ) from None


def some_objects(table: pa.Table, path: str) -> pa.Table:
    """`table` (JSON Lines read row by row) unless no line of it was an object: then the file is not
    JSON Lines at all, and saying so beats a job of error rows or a missing-column error."""
    if table.num_rows and table.column_names == [INPUT_ERROR]:
        first = table.column(INPUT_ERROR)[0].as_py()
        raise InputError(
            f"data.source: {path} is not JSON Lines: its first lines hold no JSON object ({first})"
        )
    return table


def read_jsonl_rows(path: str) -> pa.Table:
    """JSON Lines parsed line by line (see `jsonl_rows`)."""
    with open(path, "rb") as handle:
        return jsonl_rows(handle, os.path.basename(path))


def _read_saved(source: str, split: str) -> pa.Table:
    import datasets  # heavy; only saved and hub inputs need it

    try:
        data = datasets.load_from_disk(source)
    except (OSError, ValueError) as err:
        raise InputError(
            f"data.source: cannot load saved dataset {source}: {first_line(err, type(err).__name__)}"
        ) from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise InputError(f"data.split: split '{split}' not in {source} (splits: {', '.join(data)})")
        data = data[split]
    return _dataset_table(data)


def _read_hub(source: str, split: str) -> pa.Table:
    import datasets

    try:
        data = datasets.load_dataset(source, split=split)
    except Exception as err:  # the hub client raises many unrelated types; all mean "cannot load"
        raise InputError(
            f"data.source: cannot load hub dataset '{source}': {first_line(err, type(err).__name__)}"
        ) from None
    return _dataset_table(data)


def _dataset_table(data) -> pa.Table:
    # Going through the arrow formatter applies any indices mapping (select/shuffle) in row order.
    return data.with_format("arrow")[:] if data.num_rows else data.data.table


def _with_ids(table: pa.Table, id_column: str | None) -> pa.Table:
    if id_column is None:
        if "id" in table.column_names:
            raise InputError(
                "input has a column 'id': set data.id_column: id to use it as the row id, or rename it"
            )
        return table.add_column(0, "id", position_ids(table.num_rows))
    if id_column not in table.column_names:
        listed = ", ".join(table.column_names)
        raise InputError(f"data.id_column: column '{id_column}' not in input (columns: {listed})")
    if id_column != "id" and "id" in table.column_names:
        raise InputError("data.id_column: input also has a column 'id'; rename it or use data.id_column: id")
    column = table.column(id_column)
    if INPUT_ERROR in table.column_names:
        # A line that could not be parsed has no id of its own: name it by its position instead.
        unnamed = pc.and_(pc.is_null(column), pc.is_valid(table.column(INPUT_ERROR)))
        column = pc.if_else(
            unnamed,
            pc.binary_join_element_wise("input-error-row-", position_ids(len(column)), ""),
            column.cast(pa.string()),
        )
    ids = _checked_ids(column, id_column)
    return table.drop_columns([id_column]).add_column(0, "id", ids)


def position_ids(count: int) -> pa.Array:
    """Zero-padded row positions (``"00000042"``) that sort in row order; width 8 or more."""
    positions = pa.array(np.arange(count, dtype=np.int64)).cast(pa.string())
    return pc.utf8_lpad(positions, width=_id_width(count), padding="0")


def _id_width(count: int) -> int:
    # Wider than 8 only past 10**8 rows, so every id of one input has the same width and sorts.
    return max(_ID_WIDTH, len(str(max(count - 1, 0))))


def _checked_ids(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    try:
        ids = column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InputError(f"data.id_column: '{name}' ({column.type}) cannot be cast to string") from None
    if ids.null_count:
        row = pc.index(pc.is_null(ids), True).as_py()
        raise InputError(f"data.id_column: row {row} has a null id in column '{name}'")
    if pc.count_distinct(ids).as_py() != len(ids):
        _raise_duplicate(ids)
    return ids


def _raise_duplicate(ids: pa.ChunkedArray) -> None:
    seen: dict[str, int] = {}
    for row, value in enumerate(ids.to_pylist()):
        if value in seen:
            raise InputError(
                f"data.id_column: duplicate id {value!r} at row {row} (first at row {seen[value]})"
            )
        seen[value] = row
