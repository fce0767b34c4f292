"""An eval job's input: the rows of every task in one table, so one Ray Data pass over one replica
pool (the model loaded once) computes them all.

Columns: `id` (`TASK/ROW_ID`, unique over tasks, the resume key), `task`, and `input`, the row's
columns as JSON: tasks have different columns, and one table needs one schema.
"""

from __future__ import annotations

import json

import pyarrow as pa

from jobs.eval.config import EvalConfig, TaskConfig
from jobs.eval.scorers import resolve
from runner.errors import InputError
from runner.io.inputs import read_input

INPUT_SCHEMA = pa.schema([("id", pa.string()), ("task", pa.string()), ("input", pa.string())])


def _where(cfg: EvalConfig, index: int) -> str:
    return f"tasks.{index}." if cfg.tasks is not None else ""


def check_task(cfg: EvalConfig, index: int, task: TaskConfig, table: pa.Table) -> None:
    """The scoring's columns exist, carried columns are not asked for, a custom scorer imports."""
    where = _where(cfg, index)
    if task.data.carry_columns:
        raise InputError(f"{where}data.carry_columns: an eval job writes no carried columns (join on id)")
    for key in ("target_column", "choices_column"):
        column = getattr(task.scoring, key)
        if column is not None and column not in table.column_names:
            listed = ", ".join(table.column_names)
            raise InputError(f"{where}scoring.{key}: column '{column}' not in input (columns: {listed})")
    if not task.scoring.loglikelihood:
        resolve(task.scoring)  # an unknown module:function fails now, not on every replica


def read_tasks(cfg: EvalConfig) -> pa.Table:
    """Every task's rows, checked, in task order (the job's input table)."""
    ids: list[str] = []
    names: list[str] = []
    inputs: list[str] = []
    for index, task in enumerate(cfg.task_list()):
        try:
            table = read_input(task.data)
        except InputError as err:
            raise InputError(f"{_where(cfg, index)}{err}") from None
        check_task(cfg, index, task, table)
        for row in table.to_pylist():
            ids.append(f"{task.name}/{row['id']}")
            names.append(task.name)
            inputs.append(json.dumps(row, ensure_ascii=False, default=str))
    return pa.Table.from_arrays([pa.array(ids), pa.array(names), pa.array(inputs)], schema=INPUT_SCHEMA)
