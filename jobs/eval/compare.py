"""Two eval runs side by side: per task and metric both values, the difference, its paired standard
error over the rows both scored, the rows whose score flipped; and the regression gates.

Paired standard error: the rows are the same questions in both runs, so the difference of means is
judged by the spread of the per-row differences, sqrt(var(new_i - base_i) / n) (n-1 variance),
which is much tighter than combining the two runs' own standard errors when the runs are correlated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from jobs.eval.metrics import METRICS_NAME, mean_stderr, read_metrics, read_rows, write_metrics
from runner.errors import ConfigError, InputError, JobFailed
from runner.io.jobdir import JobDir

MAX_FLIPS_SHOWN = 10


class GateFailed(JobFailed):
    """A regression gate (--max-drop / --fail-below) was violated."""


@dataclass(frozen=True)
class Gate:
    """`--max-drop acc=0.02` or `--fail-below arc/acc=0.5`: a threshold on one metric (of one task)."""

    kind: str  # "max-drop" | "fail-below"
    task: str | None
    metric: str
    threshold: float

    def applies(self, task: str, metric: str) -> bool:
        return self.metric == metric and self.task in (None, task)

    def __str__(self) -> str:
        where = f"{self.task}/" if self.task else ""
        return f"--{self.kind} {where}{self.metric}={self.threshold:g}"


@dataclass
class Gates:
    items: list[Gate] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.items)

    def of(self, kind: str) -> list[Gate]:
        return [g for g in self.items if g.kind == kind]


def parse_gate(kind: str, text: str) -> Gate:
    """`[TASK/]METRIC=X` -> Gate; ConfigError (exit 2) naming the flag when unreadable."""
    spec, sep, raw = text.partition("=")
    try:
        threshold = float(raw)
    except ValueError:
        threshold = math.nan
    if not sep or not spec or math.isnan(threshold):
        raise ConfigError(f"--{kind} {text!r}: expected [TASK/]METRIC=NUMBER, e.g. acc=0.02")
    task, _, metric = spec.rpartition("/")
    return Gate(kind, task or None, metric, threshold)


def parse_gates(max_drop: list[str], fail_below: list[str]) -> Gates:
    return Gates(
        [parse_gate("max-drop", t) for t in max_drop] + [parse_gate("fail-below", t) for t in fail_below]
    )


@dataclass
class Run:
    """An eval run directory: its metrics document and per-row scores."""

    path: str
    metrics: dict
    rows: dict[tuple[str, str], dict]  # (task, id) -> row

    @classmethod
    def load(cls, path: str) -> Run:
        """InputError (exit 2) for a directory that is not a finished eval run, or whose metrics are stale."""
        document = read_metrics(path)
        summary = JobDir(path).summary() or {}
        if summary.get("status") != "done":
            raise InputError(
                f"{path}: the run did not finish (status {summary.get('status')}); rerun it to resume"
            )
        if summary.get("config_hash") != document.get("config_hash"):
            raise InputError(f"{path}: {METRICS_NAME} is from another run than its rows; rerun the eval")
        table = read_rows(path)
        rows = {(r["task"], r["id"]): r for r in table.to_pylist()}
        return cls(path, document, rows)

    def value(self, task: str, metric: str) -> float | None:
        return self.metrics["tasks"].get(task, {}).get(metric)

    def describe(self) -> str:
        """Which model the run evaluated: `model @ revision`."""
        return describe_model(self.metrics)


def describe_model(document: dict) -> str:
    """`model @ revision` of a metrics document (or a history row); the revision may be unknown."""
    revision = document.get("model_revision")
    return (
        f"{document.get('model')} @ {revision}" if revision else f"{document.get('model')} (revision unknown)"
    )


def model_change(base: dict, new: dict) -> str | None:
    """What changed in the model between two runs' metrics documents (or history rows), or None."""
    if base.get("model") != new.get("model"):
        return f"the runs evaluated different models: {base.get('model')} -> {new.get('model')}"
    old, now = base.get("model_revision"), new.get("model_revision")
    if old and now and old != now:
        return f"{new.get('model')} changed revision: {old} -> {now}"
    return None


@dataclass
class Line:
    """One task x metric of a comparison."""

    task: str
    metric: str
    base: float | None
    new: float | None
    paired_se: float | None
    shared: int
    flips: list[tuple[str, float, float]]

    @property
    def diff(self) -> float | None:
        return None if self.base is None or self.new is None else self.new - self.base


def metric_names(entry: dict) -> list[str]:
    return [k for k in entry if k not in ("n", "errors") and not k.endswith("_stderr")]


def compare(base: Run, new: Run) -> list[Line]:
    """Every task x metric of either run, paired over the row ids both scored."""
    lines = []
    tasks = list(dict.fromkeys([*new.metrics["tasks"], *base.metrics["tasks"]]))
    for task in tasks:
        entry = new.metrics["tasks"].get(task) or base.metrics["tasks"][task]
        for metric in metric_names(entry):
            diffs, flips = [], []
            for (row_task, row_id), row in new.rows.items():
                old = base.rows.get((row_task, row_id))
                if row_task != task or old is None:
                    continue
                a, b = old.get(metric), row.get(metric)
                if a is None or b is None or old["error"] or row["error"]:
                    continue
                diffs.append(b - a)
                if a != b:
                    flips.append((row_id, a, b))
            _, se = mean_stderr(diffs)
            lines.append(
                Line(task, metric, base.value(task, metric), new.value(task, metric), se, len(diffs), flips)
            )
    return lines


def fmt(value: float | None, signed: bool = False, digits: int = 4) -> str:
    """A metric value as people read it: fixed digits, '-' for none, and never '-0.0000' (a difference
    that rounds to zero is zero, whatever its sign was)."""
    if value is None:
        return "-"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return f"{0:.{digits}f}" if float(text) == 0 else text


def format_lines(lines: list[Line], max_flips: int = MAX_FLIPS_SHOWN) -> str:
    """The comparison as a plain-text table, then the flipped rows of each task x metric."""
    out = [f"{'task':<20} {'metric':<16} {'base':>8} {'new':>8} {'diff':>9} {'paired_se':>9} {'shared':>6}"]
    for ln in lines:
        out.append(
            f"{ln.task:<20} {ln.metric:<16} {fmt(ln.base):>8} {fmt(ln.new):>8} "
            f"{fmt(ln.diff, True):>9} {fmt(ln.paired_se):>9} {ln.shared:>6}"
        )
    for ln in lines:
        if ln.flips:
            shown = ", ".join(f"{i} ({a:g}->{b:g})" for i, a, b in ln.flips[:max_flips])
            more = f" and {len(ln.flips) - max_flips} more" if len(ln.flips) > max_flips else ""
            out.append(f"flipped {ln.task} {ln.metric}: {len(ln.flips)} row(s): {shown}{more}")
    return "\n".join(out)


def violations(lines: list[Line], new: Run, gates: Gates, have_base: bool) -> list[str]:
    """A line per violated gate; ConfigError when a gate names a metric no task reports."""
    found = []
    pairs = [(task, m) for task, entry in new.metrics["tasks"].items() for m in metric_names(entry)]
    check_gates(gates, pairs)
    for gate in gates.items:
        if gate.kind == "fail-below":
            for task, metric in pairs:
                value = new.value(task, metric)
                if gate.applies(task, metric) and (value is None or value < gate.threshold):
                    found.append(f"{gate} violated: {task} {metric} = {fmt(value)} < {gate.threshold:g}")
        elif have_base:
            for ln in lines:
                if gate.applies(ln.task, ln.metric) and ln.base is not None:
                    drop = ln.base - (ln.new if ln.new is not None else 0.0)
                    if drop > gate.threshold:
                        found.append(
                            f"{gate} violated: {ln.task} {ln.metric} fell {drop:.4f} "
                            f"({fmt(ln.base)} -> {fmt(ln.new)}) > {gate.threshold:g}"
                        )
    return found


def check_gates(gates: Gates, pairs: list[tuple[str, str]]) -> None:
    """ConfigError (exit 2) for a gate on a metric no task reports; `pairs` are (task, metric)."""
    for gate in gates.items:
        if not any(gate.applies(t, m) for t, m in pairs):
            known = ", ".join(sorted({f"{t}/{m}" for t, m in pairs}))
            raise ConfigError(f"{gate}: no task reports this metric (known: {known})")


def gate_command(base_path: str | None, new_path: str, gates: Gates, record: bool = False) -> int:
    """Compare (when there is a base), print, apply the gates: 0, or GateFailed (exit 1) naming the first.

    `record`: write the verdict into the new run's `_metrics.json` (`gate`), so its report says whether
    the scheduled run passed; done before a failure is raised, so a failed night is on record too."""
    new = Run.load(new_path)
    lines: list[Line] = []
    base = Run.load(base_path) if base_path is not None else None
    if base is not None:
        lines = compare(base, new)
        print(f"base: {base_path}  ({base.describe()})\nnew:  {new_path}  ({new.describe()})")
        change = model_change(base.metrics, new.metrics)
        if change:
            print(f"note: {change}")
        print(format_lines(lines))
    elif gates.of("max-drop"):
        print("no baseline run yet: --max-drop gates skipped")
    failed = violations(lines, new, gates, base is not None)
    applied = [g for g in gates.items if base is not None or g.kind == "fail-below"]
    if record and gates.any:
        skipped = [str(g) for g in gates.items if g not in applied]
        write_metrics(new_path, {**new.metrics, "gate": verdict(base, applied, skipped, failed)})
    for line in failed:
        print(f"gate failed: {line}")
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise GateFailed(f"{failed[0]}{more}")
    if applied:
        print(f"gates passed: {', '.join(str(g) for g in applied)}")
    return 0


def verdict(base: Run | None, applied: list[Gate], skipped: list[str], failed: list[str]) -> dict:
    """The gate verdict as the run's metrics document keeps it (`gate`)."""
    return {
        "passed": not failed,
        "gates": [str(g) for g in applied],
        "skipped": skipped,
        "violations": failed,
        "baseline": base.path if base else None,
        "baseline_model": base.describe() if base else None,
    }


def metrics_table(document: dict, path: str) -> str:
    """What `runner eval` prints at the end: each task's metrics with their standard errors."""
    out = [f"metrics of {path} ({describe_model(document)}, {document.get('wall_s')} s):"]
    for task, entry in document["tasks"].items():
        parts = []
        for metric in metric_names(entry):
            se = entry.get(f"{metric}_stderr")
            parts.append(f"{metric} {fmt(entry[metric])}" + (f" ± {se:.4f}" if se is not None else ""))
        out.append(f"  {task}: {', '.join(parts)} (n={entry['n']}, errors={entry['errors']})")
    return "\n".join(out)
