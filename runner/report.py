"""`runner report`: one static HTML page of a suite's history, opened from disk (no server, no
network, no JavaScript): each task x metric over the runs as an inline SVG chart with standard-error
bars, the latest run against the one before, and the rows whose score flipped between them."""

from __future__ import annotations

from html import escape
from pathlib import Path

from runner.compare import Line, Run, compare
from runner.suite import Suite

WIDTH, HEIGHT, PAD = 560, 180, 36
MAX_FLIPS = 50


def chart(points: list[dict]) -> str:
    """An SVG line chart of one metric over runs; each point's tooltip names the run."""
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
    step = (WIDTH - 2 * PAD) / max(len(points) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return PAD + i * step, HEIGHT - PAD - (v - low) / (high - low) * (HEIGHT - 2 * PAD)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img">']
    for v in (low, (low + high) / 2, high):
        _, y = xy(0, v)
        parts.append(f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="2" y="{y + 4:.1f}" font-size="10">{v:.2f}</text>')
    line = [xy(i, p["value"]) for i, p in enumerate(points) if p["value"] is not None]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
    parts.append(f'<polyline points="{path}" fill="none" stroke="#2563eb" stroke-width="2"/>')
    for i, p in enumerate(points):
        if p["value"] is None:
            continue
        x, y = xy(i, p["value"])
        if p["stderr"]:
            _, top = xy(i, p["value"] + p["stderr"])
            _, bottom = xy(i, p["value"] - p["stderr"])
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top:.1f}" y2="{bottom:.1f}" stroke="#93c5fd"/>'
            )
        tip = f"{p['run']}: {p['value']:.4f}" + (f" ± {p['stderr']:.4f}" if p["stderr"] else "")
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="#2563eb"><title>{escape(tip)}</title></circle>'
        )
    first, last = points[0]["run"], points[-1]["run"]
    parts.append(f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="10">{escape(first)}</text>')
    parts.append(
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="10" text-anchor="end">{escape(last)}</text>'
    )
    return "".join(parts) + "</svg>"


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def comparison(lines: list[Line], new: Run) -> str:
    rows = "".join(
        f"<tr><td>{escape(ln.task)}</td><td>{escape(ln.metric)}</td><td>{_num(ln.base)}</td><td>{_num(ln.new)}</td>"
        f"<td>{_num(ln.diff, True)}</td><td>{_num(ln.paired_se)}</td><td>{ln.shared}</td><td>{len(ln.flips)}</td></tr>"
        for ln in lines
    )
    head = "<tr><th>task</th><th>metric</th><th>previous</th><th>latest</th><th>diff</th><th>paired se</th>"
    table = f"<table>{head}<th>shared rows</th><th>flipped</th></tr>{rows}</table>"
    flips = []
    for ln in lines:
        for row_id, a, b in ln.flips[:MAX_FLIPS]:
            row = new.rows.get((ln.task, row_id), {})
            text = (row.get("generation") or "")[:200]
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
    ".charts{display:flex;flex-wrap:wrap;gap:1em}.chart{border:1px solid #eee;padding:.5em}"
)


def render(suite_dir: str) -> str:
    """The report page of a suite directory."""
    suite = Suite(suite_dir)
    history = suite.history().to_pylist()
    runs = suite.run_names()
    charts = []
    keys = list(dict.fromkeys((r["task"], r["metric"]) for r in history))
    for task, metric in keys:
        by_run = {r["run"]: r for r in history if (r["task"], r["metric"]) == (task, metric)}
        points = [
            {"run": run, "value": by_run[run]["value"], "stderr": by_run[run]["stderr"]}
            for run in runs
            if run in by_run
        ]
        latest = points[-1]
        charts.append(
            f'<div class="chart"><h3>{escape(task)} · {escape(metric)}</h3>{chart(points)}'
            f"<p>latest {escape(latest['run'])}: {_num(latest['value'])}</p></div>"
        )
    body = [f"<h1>Eval suite {escape(str(Path(suite_dir).resolve().name))}</h1>"]
    body.append(f"<p>{len(runs)} run(s); latest: {escape(runs[-1]) if runs else '-'}</p>")
    body.append(f'<h2>Metrics over runs</h2><div class="charts">{"".join(charts)}</div>')
    if len(runs) >= 2:
        previous, latest_dir = suite.latest_pair()
        new = Run.load(latest_dir)
        body.append(f"<h2>Latest ({escape(runs[-1])}) against previous ({escape(runs[-2])})</h2>")
        body.append(comparison(compare(Run.load(previous), new), new))
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>Eval suite report</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(suite_dir: str, output: str) -> None:
    """Write the report page to `output`."""
    Path(output).write_text(render(suite_dir), encoding="utf-8")
