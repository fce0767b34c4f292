"""Moves every batch on the storage along its lifecycle: validate, submit, follow, stop, finalize.

One pass reads each unfinished batch's events, asks the cluster once for all jobs' statuses, and
takes the step `lifecycle.next_step` names. Every step is idempotent and its result is a write-once
event, so passes may repeat, a restarted server picks up where the last one was, and two replicas
running passes at once agree (the second submit attaches, the second `end` loses to the first).
Before a step that a submit could race (finishing a batch, submitting), the job's status is asked
afresh.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from jobs.openai_batch.server.batches import Batches, job_dir
from jobs.openai_batch.server.lifecycle import State, next_step
from jobs.openai_batch.server.models import Models
from jobs.openai_batch.server.runs import Runs, job_key
from jobs.openai_batch.server.storage import derived_id
from runner.errors import RunnerError, first_line

log = logging.getLogger(__name__)

START_ATTEMPTS = 3  # job attempts for a batch whose job fails before it starts (see _never_started)
FRESH = ("submit", "complete", "fail", "cancel", "expire")


class Advancer:
    """The steps of the lifecycle, against one store, one set of served models and one cluster."""

    def __init__(self, batches: Batches, models: Models, runs: Runs, max_requests: int, order: str = "input"):
        self.batches, self.models, self.runs = batches, models, runs
        self.store, self.files = batches.store, batches.files
        self.max_requests, self.order = max_requests, order
        self._ended: set[str] = set()  # an end is final: such batches are not read again

    def pass_once(self, now: int | None = None) -> None:
        now = int(time.time()) if now is None else now
        try:
            statuses = self.runs.statuses()
        except RunnerError as err:  # the cluster is down: batches without a job still validate, fail, cancel
            log.warning("the cluster does not answer: %s (batches with a job wait for it)", first_line(err))
            statuses = None
        for batch_id in self.store.children("batches"):
            if batch_id in self._ended:
                continue
            state = self.batches.load(batch_id)
            if state is None or (statuses is None and "in_progress" in state.events):
                continue
            try:
                self.step(state, (statuses or {}).get(job_key(batch_id), (None, None)), now)
            except RunnerError as err:
                log.warning("batch %s: %s (retried at the next pass)", batch_id, first_line(err))
            except Exception:  # noqa: BLE001 - one batch's trouble must not stop the others
                log.exception("batch %s: step failed (retried at the next pass)", batch_id)
            if state.ended:
                self._ended.add(batch_id)

    def step(self, state: State, job: tuple[str | None, str | None], now: int) -> None:
        status, sid = job
        action = next_step(state, status, now)
        validated = state.events.get("validated")
        if action in FRESH and validated and not validated["errors"]:
            status, sid = self.runs.status(state.request["id"])
            action = next_step(state, status, now)
        if action == "fail" and status == "FAILED" and self._never_started(state, sid):
            action = "submit"  # attempt n+1: nothing of the batch ran, nothing to lose
        if action is not None:
            log.info("batch %s: %s", state.request["id"], action)
            getattr(self, action)(state, sid)

    def _never_started(self, state: State, sid: str | None) -> bool:
        """A job attempt that failed before its driver wrote the job's `_job.json` failed in the cluster's
        setup, not on the batch: the configs were checked when the server started and the file at
        validation. Seen with Ray 2.60: two jobs setting up the same working_dir package at once can leave
        one driver in a directory being replaced (`getcwd() failed`, its config not found). Such an
        attempt is submitted again, up to START_ATTEMPTS attempts."""
        attempt = int(sid.rsplit("-", 1)[1]) if sid and sid.rsplit("-", 1)[-1].isdigit() else START_ATTEMPTS
        started = self.store.exists(f"{job_dir(state.request['id'])}/_job.json")
        return not started and attempt < START_ATTEMPTS

    # steps

    def validate(self, state: State, _sid: str | None) -> None:
        from jobs.openai_batch.requests import validate_file

        req = state.request
        if not self.store.exists(req["input"]):
            total, model, served = 0, None, None
            errors = [
                _error(
                    "invalid_file",
                    f"the input file {req['input_file_id']} was deleted",
                    "input_file_id",
                    None,
                )
            ]
        else:
            total, model = scan(self.store, req["input"])
            served = self.models.find(model) if model is not None else None
            errors = self._model_errors(model) if served is None else []
        if served is not None:
            errors = validate_file(
                self.store.uri(req["input"]),
                endpoint=req["endpoint"],
                models=set(served.names),
                max_lines=self.max_requests,
            )
        document = {"at": int(time.time()), "total": total, "errors": errors[:1000], "model": model}
        document |= {"config": served.config, "model_path": served.path} if served else {"config": None}
        self._event(state, "validated", document)

    def _model_errors(self, model: str | None) -> list[dict]:
        """A batch runs one config: its first request's model must be one this server serves."""
        known = ", ".join(self.models.names())
        if model is None:
            return [
                _error(
                    "missing_required_parameter",
                    f"the first request names no body.model (served: {known})",
                    "body.model",
                    1,
                )
            ]
        return [
            _error(
                "model_not_found", f"model {model!r} is not served here (served: {known})", "body.model", 1
            )
        ]

    def submit(self, state: State, _sid: str | None) -> None:
        from jobs.openai_batch.command import batch_argv

        req, validated = state.request, state.events["validated"]
        batch_id = req["id"]
        folder = f"batches/{batch_id}"
        argv = batch_argv(
            self.store.uri(req["input"]),
            self.store.uri(f"{folder}/output.jsonl"),
            self.store.uri(f"{folder}/errors.jsonl"),
            self.store.uri(job_dir(batch_id)),
            validated["model_path"],
            config_path=self.runs.relative(validated["config"]),
            order=self.order,
            overrides=["ray.address=auto"],  # the driver joins the cluster it runs on, as `runner submit`'s
        )
        sid = self.runs.start(self.runs.plan(batch_id, argv, {"owner": req["owner"]}))
        self._event(state, "in_progress", {"at": int(time.time()), "submission_id": sid})

    def stop(self, _state: State, sid: str | None) -> None:
        if sid is not None:
            self.runs.stop(sid)

    def complete(self, state: State, sid: str | None) -> None:
        self._event(state, "finalizing", {"at": int(time.time())})
        self._finish(state, "completed")

    def fail(self, state: State, sid: str | None) -> None:
        errors = state.events.get("validated", {}).get("errors")
        if not errors:
            message = self.runs.message(sid) if sid else "the batch's job ended"
            errors = [_error("job_failed", message, None, None)]
        self._finish(state, "failed", errors)

    def cancel(self, state: State, _sid: str | None) -> None:
        self._finish(state, "cancelled")

    def expire(self, state: State, _sid: str | None) -> None:
        self._finish(state, "expired")

    # helpers

    def _finish(self, state: State, status: str, errors: list | None = None) -> None:
        counts, output_id, error_id = self._collect(state, status)
        total = state.events.get("validated", {}).get("total", 0)
        document = {"status": status, "at": int(time.time()), "errors": errors}
        document["usage"] = counts.pop("usage", None)
        document["request_counts"] = {"total": total, **counts}
        document |= {"output_file_id": output_id, "error_file_id": error_id}
        self._event(state, "end", document)

    def _collect(self, state: State, status: str) -> tuple[dict, str | None, str | None]:
        """The job's committed results as the batch's output and error files (the job writes them when
        it completes; a stopped or failed job's partial ones are written here)."""
        from jobs.openai_batch.results import request_counts, write_results

        req = state.request
        folder = f"batches/{req['id']}"
        if not self.store.exists(job_dir(req["id"])):
            return {"completed": 0, "failed": 0}, None, None
        uri = self.store.uri
        written = status == "completed" and self.store.exists(f"{folder}/output.jsonl")
        if written:
            counts = request_counts(uri(job_dir(req["id"])))
        else:
            counts = write_results(
                uri(job_dir(req["id"])),
                uri(f"{folder}/output.jsonl"),
                uri(f"{folder}/errors.jsonl"),
                order=self.order,
            )
        counts = {"completed": counts["completed"], "failed": counts["failed"]}
        counts["usage"] = token_usage(uri(job_dir(req["id"])))
        ids = []
        for role, name, count in (
            ("output", "output.jsonl", counts["completed"]),
            ("errors", "errors.jsonl", counts["failed"]),
        ):
            file_id = derived_id("file", req["id"], role) if count else None
            if file_id:
                self.files.add_output(file_id, req["owner"], f"{folder}/{name}", f"{req['id']}_{name}")
            ids.append(file_id)
        return counts, ids[0], ids[1]

    def _event(self, state: State, name: str, document: dict) -> None:
        state.events[name] = self.store.write_once(f"batches/{state.request['id']}", f"{name}.json", document)


def scan(store, rel: str) -> tuple[int, str | None]:
    """The number of requests (non-blank lines) and the first request's `body.model`."""
    total, model = 0, None
    pending = b""
    for chunk in store.stream(rel):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.strip():
                total += 1
                model = model or _model_of(line)
    if pending.strip():
        total += 1
        model = model or _model_of(pending)
    return total, model


def token_usage(job: str) -> dict:
    """The batch's `usage` (OpenAI's BatchUsage) summed over the job's committed rows."""
    import pyarrow.compute as pc

    from runner.io.catalogue import Catalogue
    from runner.io.durable import filesystem

    sums = {"prompt_tokens": 0, "completion_tokens": 0}  # docs/outputs.md (runner.io.output_schema)
    for table, _ in Catalogue(*filesystem(job)).tables(list(sums)):
        for name in sums:
            if name in table.column_names:
                sums[name] += pc.sum(table[name]).as_py() or 0
    prompt, output = sums["prompt_tokens"], sums["completion_tokens"]
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + output,
    }


def _model_of(line: bytes) -> str | None:
    try:
        body = json.loads(line).get("body") or {}
        return body.get("model") if isinstance(body.get("model"), str) else None
    except (ValueError, AttributeError):
        return None


def _error(code: str, message: str, param: str | None, line: int | None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


class Loop(threading.Thread):
    """Runs passes every `interval_s` (sooner when woken: a batch was created or cancelled)."""

    def __init__(self, advancer: Advancer, interval_s: float = 2.0):
        super().__init__(name="batch-advancer", daemon=True)
        self.advancer, self.interval_s = advancer, interval_s
        self._wake, self._stop = threading.Event(), threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.advancer.pass_once()
            except RunnerError as err:  # the cluster unreachable for a while: one line, try again
                log.warning("advancing batches: %s (retried in %.0f s)", first_line(err), self.interval_s)
            except Exception:  # noqa: BLE001 - whatever it is, the next pass tries again
                log.exception("advancing batches failed (retried in %.0f s)", self.interval_s)
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
