"""Rows repaired, not rejected: JSON Lines parsed line by line, values conformed to their column.

pyarrow's readers fail a whole file on one malformed line or one value whose type differs from its
column's; a job must instead turn that row into an error row. Both readers (`runner.io.inputs`, a full
read; `runner.io.stream`, chunks in Ray Data read tasks) use these; a row's problem goes into the
`_input_error` column, which the stage turns into that row's error.
"""

from __future__ import annotations

import json

import pyarrow as pa

from runner.errors import first_line
from runner.io.outputs import INPUT_ERROR


def jsonl_rows(lines, name: str, first_number: int = 1) -> pa.Table:
    """JSON Lines parsed line by line: a line that is not a JSON object, or a value whose type differs
    from the column's (the first value's kind), becomes a row with an `_input_error`, not a failure.
    Blank lines are skipped (as pyarrow's reader does), so row positions match it."""
    rows: list[dict] = []
    errors: list[str | None] = []
    for number, raw in enumerate(lines, first_number):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            if not isinstance(row, dict):
                raise ValueError(f"a {type(row).__name__}, not an object")
        except ValueError as err:  # UnicodeDecodeError and JSONDecodeError included
            rows.append({})
            errors.append(f"{name} line {number}: not a JSON object ({first_line(err, type(err).__name__)})")
            continue
        rows.append(row)
        errors.append(None)
    keys = dict.fromkeys(key for row in rows for key in row)
    columns = {key: _column(key, [row.get(key) for row in rows], errors) for key in keys}
    if any(errors):
        columns[INPUT_ERROR] = pa.array(errors, pa.string())
    return (
        pa.Table.from_pydict(columns) if columns else pa.table({INPUT_ERROR: pa.array(errors, pa.string())})
    )


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _column(name: str, values: list, errors: list[str | None]) -> pa.Array:
    """One column; values of another kind than the column's first are nulled and their rows flagged."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    first = next(_kind(v) for v in values if v is not None)
    for i, value in enumerate(values):
        if value is not None and _kind(value) != first:
            errors[i] = (
                errors[i] or f"column {name!r} is {_kind(value)} {value!r:.40}, other rows hold {first}"
            )
            values[i] = None
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # nested values that still disagree
        return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())


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
            kind, other = _kind(value), _type_kind(field.type)
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
