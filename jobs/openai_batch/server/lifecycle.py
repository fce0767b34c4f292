"""A batch's lifecycle, as OpenAI's statuses, from write-once events on the storage.

    validating -> in_progress -> finalizing -> completed
    validating -> failed                (the input file does not validate; no job runs)
    in_progress -> failed               (the job failed)
    any -> cancelling -> cancelled      (the job is stopped; what it committed is the output)
    any -> expired                      (past expires_at; likewise)

Each step is an event file written once (`<event>.json`: validated, in_progress, cancelling,
finalizing, end); the batch object is read from them, never kept in memory. Replicas may race to
write an event: the first one wins and both go on from it, so a batch ends once (`end.json`).
`next_step` says what the server should do next from the events, what Ray says about the job and
the clock: it decides, `advance` acts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from openai.types import Batch

EVENTS = ("validated", "in_progress", "cancelling", "finalizing", "end")
TERMINAL = ("completed", "failed", "cancelled", "expired")
LIVE_JOB = "live"  # Ray's PENDING / RUNNING: the job may still commit rows


@dataclass
class State:
    """A batch's create request and the events it has so far."""

    request: dict
    events: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        ev = self.events
        if "end" in ev:
            return ev["end"]["status"]
        for name in ("cancelling", "finalizing", "in_progress"):
            if name in ev:
                return name
        return "validating"

    @property
    def ended(self) -> bool:
        return "end" in self.events


def next_step(state: State, job: str | None, now: int) -> str | None:
    """What to do now: validate, submit, stop (the job), complete, fail, cancel, expire, or None
    (wait). `job` is the batch's latest job attempt's status (LIVE_JOB, SUCCEEDED, FAILED, STOPPED)
    or None when it has none on the cluster."""
    ev = state.events
    if state.ended:
        return None
    if "cancelling" in ev or now >= state.request["expires_at"]:
        if job == LIVE_JOB:
            return "stop"
        return "cancel" if "cancelling" in ev else "expire"
    if "validated" not in ev:
        return "validate"
    if ev["validated"]["errors"]:
        return "fail"
    if "in_progress" not in ev:
        return "submit"
    if job == LIVE_JOB:
        return None
    if job == "SUCCEEDED":
        return "complete"
    if job in ("FAILED", "STOPPED"):
        return "fail"
    return "submit"  # in progress but the cluster has no attempt (a restarted head): resume it


def batch_object(state: State, live_counts: dict | None = None) -> dict:
    """The OpenAI Batch object; `live_counts` are the job's committed counts while it runs."""
    req, ev = state.request, state.events
    end = ev.get("end", {})
    validated = ev.get("validated", {})
    counts = end.get("request_counts") or live_counts or {"completed": 0, "failed": 0}
    total = validated.get("total", 0)
    errors = end.get("errors") or validated.get("errors") or None
    doc = {
        "id": req["id"],
        "object": "batch",
        "endpoint": req["endpoint"],
        "input_file_id": req["input_file_id"],
        "completion_window": req["completion_window"],
        "status": state.status,
        "created_at": req["created_at"],
        "expires_at": req["expires_at"],
        "metadata": req.get("metadata"),
        "model": validated.get("model") or req.get("model"),
        "errors": {"object": "list", "data": errors} if errors else None,
        "output_file_id": end.get("output_file_id"),
        "error_file_id": end.get("error_file_id"),
        "request_counts": {"total": total, "completed": counts["completed"], "failed": counts["failed"]},
        "usage": end.get("usage"),
    }
    for name in ("in_progress", "cancelling", "finalizing"):
        doc[f"{name}_at"] = ev.get(name, {}).get("at")
    if end:
        doc[f"{end['status']}_at"] = end["at"]
    return Batch.model_validate(doc).model_dump(mode="json")
