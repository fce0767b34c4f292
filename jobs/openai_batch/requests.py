"""The OpenAI batch request file: one JSON object per line, `{"custom_id", "method": "POST", "url",
"body"}` (OpenAI's Batch API input format, also read by Azure OpenAI and `vllm run-batch`; see
https://platform.openai.com/docs/guides/batch and vLLM's `vllm/entrypoints/openai/run_batch.py`).

Two readers of one format:
- `open_requests(data)`: the job's data source. The file is planned and read in chunks by Ray Data
  read tasks like every JSON Lines input (`runner.io.stream`), with its own line parser: each line
  becomes a row `id` (= custom_id), `url`, `model`, `body` (the request body as JSON text, so bodies
  of any shape share one column type) and `line` (its line number, for input-order output). A line
  that is not a request becomes that row's input error: the job goes on, and the line gets an error
  line in the results.
- `validate_file(uri, ...)`: the checks for which OpenAI rejects a whole batch before running it
  (`errors.data` of a failed batch), for a server that answers like OpenAI (`runner serve`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from jobs.openai_batch.params import ENDPOINTS
from runner.config import DataConfig
from runner.errors import InputError, first_line
from runner.io.chunks import _chunks, _resolve_uri
from runner.io.outputs import INPUT_ERROR
from runner.io.stream import StreamedInput

ID_COLUMN = "custom_id"
# The columns of a request row before the job adds `id` (from custom_id); carried into the output.
CARRIED = ("url", "model", "line")
COLUMNS = pa.schema(
    [
        (ID_COLUMN, pa.string()),
        ("url", pa.string()),
        ("model", pa.string()),
        ("body", pa.string()),
        ("line", pa.int64()),
        (INPUT_ERROR, pa.string()),
    ]
)


def open_requests(data: DataConfig) -> StreamedInput:
    """Plan reading a request file (local path or pyarrow URI) as a streamed job input."""
    fs, files = _files(data.source)
    chunks = _chunks(fs, files, "jsonl", data.limit)
    return StreamedInput(data, fs, chunks, COLUMNS, parse=parse_lines)


def _files(source: str) -> tuple[pafs.FileSystem, list[str]]:
    if "://" in source:
        _fmt, fs, files = _resolve_uri(source, "jsonl")
        return fs, files
    path = os.path.expanduser(source)
    if not os.path.isfile(path):
        raise InputError(f"batch.input: no such file: {source}")
    return pafs.LocalFileSystem(), [os.path.abspath(path)]


def parse_lines(data: bytes, name: str, first_number: int) -> pa.Table:
    """A chunk of the request file -> request rows (`COLUMNS`); blank lines are skipped, as every
    JSON Lines reader here skips them, so row positions agree with the planned counts."""
    rows = [_row(raw, number, name) for number, raw in enumerate(data.split(b"\n"), first_number)]
    rows = [r for r in rows if r is not None]
    return pa.Table.from_pylist(rows, schema=COLUMNS)


def _row(raw: bytes, number: int, name: str) -> dict | None:
    if not raw.strip():
        return None
    row = {ID_COLUMN: None, "url": None, "model": None, "body": None, "line": number, INPUT_ERROR: None}
    try:
        request = json.loads(raw)
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError included
        row[INPUT_ERROR] = f"{name} line {number}: not JSON ({first_line(err, type(err).__name__)})"
        return row
    if not isinstance(request, dict):
        row[INPUT_ERROR] = f"{name} line {number}: a {type(request).__name__}, not a request object"
        return row
    custom_id = request.get("custom_id")
    row[ID_COLUMN] = custom_id if isinstance(custom_id, str) or custom_id is None else json.dumps(custom_id)
    body = request.get("body")
    row["url"] = request.get("url") if isinstance(request.get("url"), str) else None
    row["model"] = (
        body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
    )
    row["body"] = json.dumps(body, ensure_ascii=False) if body is not None else None
    problem = _line_problem(request)
    if problem is not None:
        row[INPUT_ERROR] = f"{name} line {number}: {problem['message']}"
    return row


def _line_problem(request: dict, endpoint: str | None = None) -> dict | None:
    """What is wrong with one request object as a line of a batch file, as an OpenAI error item."""
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _item("missing_required_parameter", "custom_id", "custom_id must be a non-empty string")
    if request.get("method") != "POST":
        return _item("invalid_method", "method", f"method must be 'POST' (got {request.get('method')!r})")
    url = request.get("url")
    if url not in ENDPOINTS:
        return _item("invalid_url", "url", f"url {url!r} is not one of {', '.join(ENDPOINTS)}")
    if endpoint is not None and url != endpoint:
        return _item("mismatched_endpoint", "url", f"url {url!r} is not the batch's endpoint {endpoint!r}")
    if not isinstance(request.get("body"), dict):
        return _item("missing_required_parameter", "body", "body must be a JSON object")
    return None


def _item(code: str, param: str | None, message: str, line: int | None = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


def validate_file(
    uri: str, endpoint: str | None = None, models: set[str] | None = None, max_lines: int | None = None
) -> list[dict]:
    """The problems for which OpenAI rejects a whole batch file, as its `errors.data` items
    {code, message, param, line} (line numbers from 1); [] when the file may run.

    Checked per line: JSON object, custom_id (a non-empty string, unique in the file), method POST, url
    one of the endpoints (and `endpoint`, when given), body an object; with `models` given, a body
    must name its `model` (which name it is, is checked per request when it runs: an unknown one is
    that request's error line). At most `max_lines` requests. Streams the file: memory is the ids."""
    errors: list[dict] = []
    seen: set[str] = set()
    count = 0
    for number, raw in _lines(uri):
        count += 1
        problem = _validate_line(raw, endpoint, models, seen)
        if problem is not None:
            errors.append({**problem, "line": number})
    if count == 0:
        errors.append(_item("empty_file", None, "the file holds no requests"))
    if max_lines is not None and count > max_lines:
        errors.append(_item("too_many_requests", None, f"{count} requests: at most {max_lines} per batch"))
    return errors


def _validate_line(raw: bytes, endpoint: str | None, models: set[str] | None, seen: set[str]) -> dict | None:
    try:
        request = json.loads(raw)
    except ValueError:
        return _item("invalid_json_line", None, "this line is not parseable as valid JSON")
    if not isinstance(request, dict):
        return _item("invalid_json_line", None, "this line is not a JSON object")
    problem = _line_problem(request, endpoint)
    if problem is not None:
        return problem
    if request["custom_id"] in seen:
        return _item("duplicate_custom_id", "custom_id", f"custom_id {request['custom_id']!r} is not unique")
    seen.add(request["custom_id"])
    if models is not None and not isinstance(request["body"].get("model"), str):
        return _item("missing_required_parameter", "body.model", "body.model must name a model")
    return None


def _lines(uri: str) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of every non-blank line, read in blocks."""
    fs, files = _files(uri)
    with fs.open_input_stream(files[0]) as stream:
        number, carry = 0, b""
        while True:
            block = stream.read(1 << 22)
            lines = (carry + block).split(b"\n")
            carry = lines.pop() if block else b""
            for raw in lines:
                number += 1
                if raw.strip():
                    yield number, raw
            if not block:
                return
