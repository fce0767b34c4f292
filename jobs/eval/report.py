"""`runner report`: one static HTML page of a suite's history, opened from disk (no server, no
network, no JavaScript). It answers what a scheduled eval's reader asks first: did the latest run's
gate pass, which model (and revision) it evaluated, what changed since the run before; then every
run in a table, each task x metric over the runs as an inline SVG chart with standard-error bars and
a mark where the model changed, and the rows whose score flipped between the last two runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path

from jobs.eval.compare import Line, Run, compare, describe_model, fmt, model_change
from jobs.eval.metrics import read_metrics
from jobs.eval.suite import Suite
from runner.errors import InputError

WIDTH, HEIGHT, PAD, BOTTOM = 560, 230, 40, 80
LABEL_ROOM = 60  # right of the last run: its slanted label runs down to the right
RUN_SPACING = 26  # px between runs: every run gets its own readable x-axis label
MAX_FLIPS = 50
SIGNIFICANT = 2.0  # paired standard errors: a change beyond this many is unlikely to be noise


@dataclass
class RunInfo:
    """One recorded run as the page shows it: identity from the history, gate from its metrics."""

    name: str
    finished_at: object
    model: str | None
    model_revision: str | None
    code_version: str | None
    config_hash: str | None
    gate: dict | None

    @property
    def identity(self) -> dict:
        return {"model": self.model, "model_revision": self.model_revision}


def run_infos(suite: Suite, history: list[dict], names: list[str]) -> list[RunInfo]:
    first = {}
    for row in history:
        first.setdefault(row["run"], row)
    infos = []
    for name in names:
        row = first[name]
        try:
            gate = read_metrics(str(suite.runs / name)).get("gate")
        except InputError:  # the run directory was removed; its history stays
            gate = None
        fields = ("finished_at", "model", "model_revision", "code_version", "config_hash")
        infos.append(RunInfo(name, *(row.get(f) for f in fields), gate))
    return infos


def when(finished: object) -> str:
    return f"{finished:%Y-%m-%d %H:%M UTC}" if isinstance(finished, datetime) else str(finished)


def chart(points: list[dict]) -> str:
    """An SVG line chart of one metric over runs: every run labelled on the x-axis, a dashed line where
    the evaluated model (or its revision) changed, each point's tooltip naming run, model and value."""
    values = [p["value"] for p in points if p["value"] is not None]
    if not values:
        return "<p>no values</p>"
    spans = [
        (p["value"] - (p["stderr"] or 0), p["value"] + (p["stderr"] or 0))
        for p in points
        if p["value"] is not None
    ]
    low, high = min(s[0] for s in spans), max(s[1] for s in spans)
    if 0 <= low and high <= 1:
        low, high = 0.0, 1.0  # rates: the whole scale, so a small wobble does not look like a cliff
    high = high if high > low else low + 1
    width = max(WIDTH, 2 * PAD + RUN_SPACING * (len(points) - 1))
    step = (width - 2 * PAD) / max(len(points) - 1, 1)
    plot_bottom = HEIGHT - BOTTOM

    def xy(i: int, v: float) -> tuple[float, float]:
        return PAD + i * step, plot_bottom - (v - low) / (high - low) * (plot_bottom - PAD / 2)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + LABEL_ROOM}" height="{HEIGHT}" role="img">'
    ]
    for v in (low, (low + high) / 2, high):
        _, y = xy(0, v)
        parts.append(f'<line x1="{PAD}" x2="{width - PAD}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="2" y="{y + 4:.1f}" font-size="10">{fmt(v, digits=2)}</text>')
    for i in range(1, len(points)):
        change = model_change(points[i - 1], points[i])
        if change:
            x = xy(i, low)[0] - step / 2
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{PAD / 2}" y2="{plot_bottom}" stroke="#f59e0b" '
                f'stroke-dasharray="4 3"><title>{escape(change)}</title></line>'
                f'<text x="{x + 3:.1f}" y="{PAD / 2 + 8}" font-size="9" fill="#b45309">model changed</text>'
            )
    line = [xy(i, p["value"]) for i, p in enumerate(points) if p["value"] is not None]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
    parts.append(f'<polyline points="{path}" fill="none" stroke="#2563eb" stroke-width="2"/>')
    for i, p in enumerate(points):
        x = xy(i, low)[0]
        label = p["run"] if len(p["run"]) <= 18 else p["run"][:17] + "…"
        parts.append(
            f'<text x="{x - 3:.1f}" y="{plot_bottom + 12}" font-size="9" '
            f'transform="rotate(40 {x - 3:.1f} {plot_bottom + 12})"><title>{escape(p["run"])}</title>'
            f"{escape(label)}</text>"
        )
        if p["value"] is None:
            continue
        _, y = xy(i, p["value"])
        if p["stderr"]:
            _, top = xy(i, p["value"] + p["stderr"])
            _, bottom = xy(i, p["value"] - p["stderr"])
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top:.1f}" y2="{bottom:.1f}" stroke="#93c5fd"/>'
            )
        tip = f"{p['run']} ({describe_model(p)}): {fmt(p['value'])}"
        tip += f" ± {fmt(p['stderr'])}" if p["stderr"] else ""
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="#2563eb"><title>{escape(tip)}</title></circle>'
        )
    return "".join(parts) + "</svg>"


def gate_text(gate: dict | None) -> tuple[str, str]:
    """(css class, words) of a run's gate verdict."""
    if not gate:
        return "none", "not gated"
    if gate["passed"]:
        skipped = f"; skipped without a baseline: {', '.join(gate['skipped'])}" if gate.get("skipped") else ""
        return "pass", f"passed ({', '.join(gate['gates']) or 'no gate applied'}){skipped}"
    return "fail", "FAILED: " + "; ".join(gate["violations"])


def latest_summary(infos: list[RunInfo], lines: list[Line] | None) -> str:
    """The answer to "did the gate pass, which model, what changed" for the latest run."""
    latest = infos[-1]
    css, words = gate_text(latest.gate)
    items = [
        f'<li>Gate: <span class="{css}">{escape(words)}</span></li>',
        f"<li>Model: <b>{escape(describe_model(latest.identity))}</b></li>",
        f"<li>Finished: {escape(when(latest.finished_at))}; code {escape(str(latest.code_version))}; "
        f"config {escape(str(latest.config_hash))}</li>",
    ]
    if len(infos) >= 2:
        previous = infos[-2]
        changes = [model_change(previous.identity, latest.identity)]
        for what in ("code_version", "config_hash"):
            old, new = getattr(previous, what), getattr(latest, what)
            changes.append(f"{what.replace('_', ' ')} changed: {old} -> {new}" if old != new else None)
        changes += moved_metrics(lines or [])
        said = [c for c in changes if c] or ["same model, code and config; no metric changed"]
        items.append(
            f"<li>Since {escape(previous.name)}:<ul>{''.join(f'<li>{escape(c)}</li>' for c in said)}</ul></li>"
        )
    return f"<h2>Latest run: {escape(latest.name)}</h2><ul>{''.join(items)}</ul>"


def moved_metrics(lines: list[Line]) -> list[str]:
    """Every task x metric whose value changed, saying whether the change is beyond SIGNIFICANT paired
    standard errors (the same questions in both runs) or within them."""
    moved = []
    for ln in lines:
        if ln.diff is None or fmt(ln.diff) == fmt(0.0):
            continue
        if ln.paired_se is None:
            noise = "no paired se"
        else:
            beyond = abs(ln.diff) > SIGNIFICANT * ln.paired_se
            noise = f"paired se {fmt(ln.paired_se)}, {'beyond' if beyond else 'within'} {SIGNIFICANT:g} se"
        moved.append(
            f"{ln.task} {ln.metric}: {fmt(ln.base)} -> {fmt(ln.new)} ({fmt(ln.diff, True)}; {noise}; "
            f"{len(ln.flips)} row(s) flipped)"
        )
    return moved


def runs_table(infos: list[RunInfo]) -> str:
    head = "<tr><th>#</th><th>run</th><th>finished</th><th>model</th><th>revision</th><th>code</th><th>gate</th></tr>"
    rows = []
    for i, info in enumerate(infos):
        before = infos[i - 1] if i else info
        cells = []
        for value, old in (
            (info.model, before.model),
            (info.model_revision, before.model_revision),
            (info.code_version, before.code_version),
        ):
            mark = ' class="changed"' if value != old else ""
            cells.append(f"<td{mark}>{escape(str(value or '-'))}</td>")
        css, words = gate_text(info.gate)
        rows.append(
            f"<tr><td>{i + 1}</td><td>{escape(info.name)}</td><td>{escape(when(info.finished_at))}</td>"
            f'{"".join(cells)}<td class="{css}">{escape(words)}</td></tr>'
        )
    return f"<table>{head}{''.join(rows)}</table>"


def comparison(lines: list[Line], new: Run) -> str:
    rows = "".join(
        f"<tr><td>{escape(ln.task)}</td><td>{escape(ln.metric)}</td><td>{fmt(ln.base)}</td><td>{fmt(ln.new)}</td>"
        f"<td>{fmt(ln.diff, True)}</td><td>{fmt(ln.paired_se)}</td><td>{ln.shared}</td><td>{len(ln.flips)}</td></tr>"
        for ln in lines
    )
    head = "<tr><th>task</th><th>metric</th><th>previous</th><th>latest</th><th>diff</th><th>paired se</th>"
    table = f"<table>{head}<th>shared rows</th><th>flipped</th></tr>{rows}</table>"
    flips = []
    for ln in lines:
        for row_id, a, b in ln.flips[:MAX_FLIPS]:
            row = new.rows.get((ln.task, row_id), {})
            text = (row.get("generation") or "-")[:200]
            flips.append(
                f"<tr><td>{escape(ln.task)}</td><td>{escape(ln.metric)}</td><td>{escape(row_id)}</td>"
                f"<td>{a:g} → {b:g}</td><td>{escape(str(row.get('target')))}</td><td><code>{escape(text)}</code></td></tr>"
            )
    flipped = (
        "<table><tr><th>task</th><th>metric</th><th>id</th><th>score</th><th>target</th><th>latest generation</th></tr>"
        + "".join(flips)
        + "</table>"
        if flips
        else "<p>No row changed its score.</p>"
    )
    return f"{table}<h2>Flipped rows</h2>{flipped}"


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#111}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}"
    ".charts{display:flex;flex-wrap:wrap;gap:1em}.chart{border:1px solid #eee;padding:.5em;overflow-x:auto}"
    ".pass{color:#15803d;font-weight:600}.fail{color:#b91c1c;font-weight:600}.none{color:#555}"
    ".changed{background:#fef3c7}"
)


def charts(history: list[dict], infos: list[RunInfo]) -> str:
    order = {info.name: info for info in infos}
    out = []
    for task, metric in dict.fromkeys((r["task"], r["metric"]) for r in history):
        by_run = {r["run"]: r for r in history if (r["task"], r["metric"]) == (task, metric)}
        points = [
            {"run": name, "value": by_run[name]["value"], "stderr": by_run[name]["stderr"], **info.identity}
            for name, info in order.items()
            if name in by_run
        ]
        latest = points[-1]
        out.append(
            f'<div class="chart"><h3>{escape(task)} · {escape(metric)}</h3>{chart(points)}'
            f"<p>latest {escape(latest['run'])}: {fmt(latest['value'])}</p></div>"
        )
    return "".join(out)


def render(suite_dir: str) -> str:
    """The report page of a suite directory."""
    suite = Suite(suite_dir)
    history = suite.history().to_pylist()
    infos = run_infos(suite, history, suite.run_names())
    name = Path(suite_dir).resolve().name
    lines, new = None, None
    if len(infos) >= 2:
        previous, latest_dir = suite.latest_pair()
        new = Run.load(latest_dir)
        lines = compare(Run.load(previous), new)
    body = [f"<h1>Eval report: {escape(name)}</h1>"]
    body.append(f"<p>{len(infos)} run(s) in {escape(str(Path(suite_dir).resolve()))}</p>")
    body.append(latest_summary(infos, lines))
    body.append(f"<h2>Runs</h2>{runs_table(infos)}")
    body.append(f'<h2>Metrics over runs</h2><div class="charts">{charts(history, infos)}</div>')
    if lines is not None:
        body.append(f"<h2>Latest ({escape(infos[-1].name)}) against previous ({escape(infos[-2].name)})</h2>")
        body.append(comparison(lines, new))
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>Eval report: {escape(name)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(suite_dir: str, output: str) -> None:
    """Write the report page to `output`."""
    Path(output).write_text(render(suite_dir), encoding="utf-8")
