"""A row's own generation options, read from the columns the config names: sampling seed, temperature and
top_p (`data.seed_column`, ...), a JSON schema (`data.json_schema_column`) and an adapter
(`data.adapter_column`). They become optional fields of the engine's `Request`.

A null or empty cell keeps the job's value. Numbers may come as text (CSV cells are text; JSON Lines
written by hand sometimes quote them), as OpenAI's and most CLIs' parsers accept them. A value that is
not usable (not a number, out of range, not finite) is a `RowError` with one line naming the column,
so the row becomes an error row and the job goes on.
"""

from __future__ import annotations

import math
from typing import Any

from jobs.generate.prompts import RowError
from runner.config import JobConfig
from runner.engine.types import Constraint, RowSampling


def is_unset(value: Any) -> bool:
    """A cell that keeps the job's value: null, or empty text (an empty CSV cell)."""
    return value is None or (isinstance(value, str) and not value.strip())


def _from_text(value: str, kind: type) -> Any:
    try:
        return int(value) if kind is int else float(value)
    except ValueError:
        # "1e3" or "64.0" for an integer column: take it when it is a whole number.
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if kind is int and number.is_integer() else number


def _number(value: Any, column: str, kind: type, low: float, high: float | None, low_open: bool) -> Any:
    if isinstance(value, str):
        value = _from_text(value.strip(), kind)
    if isinstance(value, float) and not math.isfinite(value):
        return RowError(f"column {column!r} is {value!r}: must be a finite number")
    if isinstance(value, float) and kind is int and value.is_integer():
        value = int(value)
    ok_type = isinstance(value, int | float) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not ok_type:
        return RowError(
            f"column {column!r} is {value!r}: expected a{'n' if kind is int else ''} {kind.__name__}"
        )
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
        self.job_max_new_tokens = cfg.sampling.max_new_tokens

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

    def max_new_tokens(self, row: dict) -> int | RowError:
        """The row's `data.max_new_tokens_column` value, or the job's `sampling.max_new_tokens`."""
        column = self.data.max_new_tokens_column
        value = row.get(column) if column else None
        if is_unset(value):
            return self.job_max_new_tokens
        limit = _number(value, column, int, 1, None, False)
        if isinstance(limit, RowError):
            return RowError(f"column {column!r} is {value!r}: max_new_tokens must be a positive integer")
        return limit

    def _sampling(self, row: dict) -> RowSampling | RowError | None:
        d = self.data
        specs = {
            "seed": (d.seed_column, int, 0, None, False),
            "temperature": (d.temperature_column, float, 0, None, False),
            "top_p": (d.top_p_column, float, 0, 1, True),
        }
        values = {}
        for name, (column, kind, low, high, low_open) in specs.items():
            if column and not is_unset(row.get(column)):
                value = _number(row[column], column, kind, low, high, low_open)
                if isinstance(value, RowError):
                    return value
                values[name] = value
        return RowSampling(**values) if values else None

    def _constraint(self, row: dict) -> Constraint | RowError | None:
        from runner.engine import constraints

        column = self.data.json_schema_column
        if not column or is_unset(row.get(column)):
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
