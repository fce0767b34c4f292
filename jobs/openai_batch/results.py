"""The batch's results, assembled from the committed Parquet parts (the resumable source of truth):
the OpenAI output file, the error file, and the batch's `request_counts`.

Assembled at the end of a run (and again on demand: `write_results`, `runner export`), never
appended while generating: a run killed and resumed has each request in its parts once, so each
`custom_id` gets one line (a later line repeating a custom_id gets none: `is_repeat`). `order="input"` writes lines in request-file order (vLLM run-batch), which holds the
result rows in memory to sort them; `order="any"` streams part by part (OpenAI's files are
unordered: match lines by custom_id).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from jobs.openai_batch import responses
from runner.io.catalogue import Catalogue, duplicate_id_error
from runner.io.durable import filesystem
from runner.io.jobdir import JobDir

TOTAL_KEY = "requests_in_file"  # _job.json: the request file's line count, for request_counts


def request_counts(output_dir: str) -> dict:
    """{"total", "completed", "failed"} (OpenAI's `request_counts`): completed and failed count the
    committed requests by custom_id (a repeat is not a request of its own), total the requests of the
    file as the job recorded it in `_job.json` (before it has: the requests committed)."""
    fs, root = filesystem(output_dir)
    completed = failed = 0
    for table, _created in Catalogue(fs, root).tables(["id", "error"]):
        errors = table.filter(pc.is_valid(table.column("error")))
        completed += table.num_rows - errors.num_rows
        failed += sum(1 for row in errors.to_pylist() if not is_repeat(row))
    summary = JobDir(output_dir).summary() or {}
    total = max(int(summary.get(TOTAL_KEY) or 0), completed + failed)
    return {"total": total, "completed": completed, "failed": failed}


def is_repeat(row: dict) -> bool:
    """A row whose custom_id an earlier line of the file has: the stage does not run it (ids are the
    job's unit of exactly-once), and the results hold the earlier line's result only. Whether such a
    row exists depends on when a job was resumed (a rerun skips ids already committed), so the
    results never show it: one line per custom_id, whatever the kills."""
    return row.get("error") is not None and row["error"] == duplicate_id_error(row["id"])


def write_results(output_dir: str, output_uri: str, error_uri: str | None, order: str = "input") -> dict:
    """Write the output file (and the error file: failed requests' lines; None: into the output file)
    from the committed parts of `output_dir`; returns `request_counts(output_dir)`."""
    if order not in ("input", "any"):
        raise ValueError(f"order: {order!r} is not one of input, any")
    fs, root = filesystem(output_dir)
    catalogue = Catalogue(fs, root)
    with _Writer(output_uri) as out, _Writer(error_uri) as errors:
        for row, created in _rows(catalogue, order):
            if is_repeat(row):
                continue
            target = errors if error_uri is not None and responses.is_error(row) else out
            target.write(responses.line(row, int(created)))
    return request_counts(output_dir)


def _rows(catalogue: Catalogue, order: str) -> Iterator[tuple[dict, float]]:
    """(row, when its part was written) of every committed row, in part order or request-file order."""
    parts = catalogue.tables(list(responses.COLUMNS))
    if order == "any":
        for table, created in parts:
            for batch in table.to_batches():
                yield from ((row, created) for row in batch.to_pylist())
        return
    tables = [t.append_column(_CREATED, pa.array([c] * t.num_rows, pa.float64())) for t, c in parts]
    if not tables:
        return
    table = pa.concat_tables(tables, promote_options="default")
    table = table.take(pc.sort_indices(table, [("line", "ascending"), ("id", "ascending")]))
    for batch in table.to_batches():
        for row in batch.to_pylist():
            yield row, row.pop(_CREATED)


_CREATED = "_created"


class _Writer:
    """JSON Lines streamed to a hidden temp file beside `uri` (a local path or pyarrow URI), moved
    onto `uri` when closed without error: a reader never sees half a file."""

    def __init__(self, uri: str | None):
        self.uri = uri
        self.stream = None

    def __enter__(self) -> _Writer:
        if self.uri is not None:
            self.fs, path = filesystem(self.uri)
            root, name = os.path.dirname(path), os.path.basename(path)
            self.fs.create_dir(root, recursive=True)
            self.final, self.temp = path, f"{root}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
            self.stream = self.fs.open_output_stream(self.temp)
        return self

    def write(self, line: dict) -> None:
        self.stream.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")

    def __exit__(self, kind, *_exc) -> None:
        if self.stream is None:
            return
        self.stream.close()
        if kind is not None:
            self.fs.delete_file(self.temp)
            return
        self.fs.move(self.temp, self.final)
