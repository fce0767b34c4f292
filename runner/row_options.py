"""A row's own generation options, read from the columns the config names: sampling seed, temperature and
top_p (`data.seed_column`, ...), a JSON schema (`data.json_schema_column`) and an adapter
(`data.adapter_column`). They become optional fields of the engine's `Request`.

A null cell keeps the job's value. A value that is not usable is a `RowError` with one line naming the
column, so the row becomes an error row and the job goes on.
"""

from __future__ import annotations

from typing import Any

from runner.config import JobConfig
from runner.engine.types import Constraint, RowSampling
from runner.prompts import RowError


def _number(value: Any, column: str, kind: type, low: float, high: float | None, low_open: bool) -> Any:
    if isinstance(value, float) and kind is int and value.is_integer():
        value = int(value)
    ok_type = isinstance(value, int | float) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not ok_type:
        return RowError(f"column {column!r} is {value!r}: expected a {kind.__name__}")
    above = value > low if low_open else value >= low
    if not above or (high is not None and value > high):
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        return RowError(f"column {column!r} is {value!r}: must be {bound}")
    return kind(value)


class RowOptions:
    """Turns a row's option columns into Request keyword arguments (or a RowError)."""

    def __init__(self, cfg: JobConfig):
        from runner.engine import constraints

        self.data = cfg.data
        self.adapters = set(cfg.model.adapters or {})
        self.job_constraint = constraints.job_constraint(cfg.sampling)

    def for_row(self, row: dict) -> dict | RowError:
        """{sampling, constraint, adapter} for Request, only those the row sets."""
        out: dict[str, Any] = {}
        sampling = self._sampling(row)
        constraint = self._constraint(row)
        adapter = self._adapter(row)
        for value in (sampling, constraint, adapter):
            if isinstance(value, RowError):
                return value
        if sampling is not None:
            out["sampling"] = sampling
        if constraint is not None:
            out["constraint"] = constraint
        if adapter is not None:
            out["adapter"] = adapter
        return out

    def _sampling(self, row: dict) -> RowSampling | RowError | None:
        d = self.data
        specs = {
            "seed": (d.seed_column, int, 0, None, False),
            "temperature": (d.temperature_column, float, 0, None, False),
            "top_p": (d.top_p_column, float, 0, 1, True),
        }
        values = {}
        for name, (column, kind, low, high, low_open) in specs.items():
            if column and row.get(column) is not None:
                value = _number(row[column], column, kind, low, high, low_open)
                if isinstance(value, RowError):
                    return value
                values[name] = value
        return RowSampling(**values) if values else None

    def _constraint(self, row: dict) -> Constraint | RowError | None:
        from runner.engine import constraints

        column = self.data.json_schema_column
        if not column or row.get(column) is None:
            return self.job_constraint
        made = constraints.row_constraint(row[column], column)
        return RowError(made) if isinstance(made, str) else made

    def _adapter(self, row: dict) -> str | RowError | None:
        column = self.data.adapter_column
        value = row.get(column) if column else None
        if value is None or value == "":
            return None
        if value not in self.adapters:
            known = ", ".join(sorted(self.adapters)) or "none configured"
            return RowError(f"column {column!r} is {value!r}: not one of model.adapters ({known})")
        return value
