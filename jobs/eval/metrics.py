"""Per-task metrics over an eval output directory, and the run's `_metrics.json` document.

Every metric is a mean of per-row scores with lm-evaluation-harness's standard error: the sample
standard error of the mean, sqrt(var / n) with the n-1 variance. Error rows are left out of the mean
and counted in `errors`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.eval.config import EvalConfig
from runner.errors import InputError, first_line
from runner.io.jobdir import JobDir

METRICS_NAME = "_metrics.json"  # `_`: pyarrow / pandas skip it when reading the directory as Parquet


def mean_stderr(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard error of the mean (None where undefined)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def read_rows(path: str, columns: list[str] | None = None) -> pa.Table:
    """The committed rows of an eval output directory (parts only)."""
    if not JobDir(path).catalogue.numbers():
        raise InputError(f"{path}: no part files (not an eval run directory?)")
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: cannot read its part files ({first_line(err)})") from None
    return table


def task_metrics(cfg: EvalConfig, path: str) -> dict[str, dict]:
    """{task: {metric: mean, metric_stderr: ..., n: scored rows, errors: error rows}}."""
    columns = cfg.metric_columns()
    rows = read_rows(path, ["task", "error", *columns]).to_pylist()
    out: dict[str, dict] = {}
    for task in cfg.task_list():
        mine = [r for r in rows if r["task"] == task.name]
        scored = [r for r in mine if r["error"] is None]
        entry: dict = {}
        for metric in task.scoring.metrics:
            mean, stderr = mean_stderr([r[metric] for r in scored if r[metric] is not None])
            entry[metric], entry[f"{metric}_stderr"] = mean, stderr
        entry["n"], entry["errors"] = len(scored), len(mine) - len(scored)
        out[task.name] = entry
    return out


def total_tokens(path: str) -> int:
    """Prompt (multiple choice: scored) plus generated tokens of every row, all runs of a resumed job."""
    table = read_rows(path, ["prompt_tokens", "completion_tokens"])
    return int(sum(pc.sum(table[c]).as_py() or 0 for c in ("prompt_tokens", "completion_tokens")))


def code_version() -> str:
    """This runner's version, and its git commit when run from a checkout (`-dirty` with local edits)."""
    version = importlib.metadata.version("hf-batch-runner")
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


def metrics_document(cfg: EvalConfig, path: str, summary: dict, revision: str | None) -> dict:
    """The run's `_metrics.json`: metrics per task plus what identifies the run."""
    return {
        "tasks": task_metrics(cfg, path),
        "model": cfg.model.path,
        "model_revision": revision,
        "config_hash": cfg.result_hash(),
        "code_version": code_version(),
        "tokens": total_tokens(path),
        "wall_s": summary.get("wall_time_s"),
        "status": summary.get("status"),
    }


def write_metrics(path: str, document: dict) -> None:
    """Write `_metrics.json` next to the parts (atomically, as the job summary)."""
    JobDir(path).write_document(METRICS_NAME, document)


def read_metrics(path: str) -> dict:
    """A run directory's `_metrics.json`; InputError when it has none."""
    try:
        document = JobDir(path).read_document(METRICS_NAME)
    except ValueError as err:
        raise InputError(str(err)) from None
    if document is None:
        raise InputError(f"{path}: no {METRICS_NAME} (not a finished eval run directory)")
    return document


def weights_hash(directory: str) -> str:
    """sha256 over the names and contents of a model directory's weight and config files."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in Path(directory).iterdir() if p.suffix in (".safetensors", ".bin", ".json", ".model", ".pt")
    )
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def model_revision(model) -> str | None:
    """What identifies the weights evaluated: the hub commit, or a hash of a local model's files.

    Hub ids resolve from the local cache's refs first (no network), then the hub; None when neither
    answers. A demo model is hashed only if it is already built here (never built for this)."""
    from runner.engine.demo_model import cache_dir, is_demo

    path = model.path
    local = cache_dir() / path.split(":", 1)[1] if is_demo(path) else Path(path).expanduser()
    if local.is_dir():
        return weights_hash(str(local))
    if is_demo(path):
        return None
    if model.revision and len(model.revision) == 40 and all(c in "0123456789abcdef" for c in model.revision):
        return model.revision
    try:
        from huggingface_hub import constants

        ref = (
            Path(constants.HF_HUB_CACHE)
            / f"models--{path.replace('/', '--')}"
            / "refs"
            / (model.revision or "main")
        )
        if ref.is_file():
            return ref.read_text().strip()
        from huggingface_hub import HfApi

        return HfApi().model_info(path, revision=model.revision, timeout=10).sha
    except Exception:  # noqa: BLE001 - offline or no access: the revision is unknown, not an error
        return None
