"""Batches as jobs on the Ray cluster, through the same Job Submission code as `runner submit`.

A batch's job key is derived from the batch id (`runner-<batch_id>`): its attempts are found by the
key in the job metadata, and a second submit of the same attempt (a restarted server, another
replica) is refused by Ray as a duplicate submission id and attaches (`runner.orchestration.submit.submit`).
A job that ended without the batch ending (the cluster was restarted) is submitted again as the
next attempt and resumes from the committed rows, as `runner submit` does.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from jobs.openai_batch.server.lifecycle import LIVE_JOB
from runner.orchestration import submit
from runner.orchestration.submit import EXCLUDES, PROJECT, STOP_GRACE_S, Submission


def job_key(batch_id: str) -> str:
    return f"runner-{batch_id}"


class Runs:
    """The cluster at `address` (a Ray dashboard) and the working directory shipped with each job."""

    def __init__(self, address: str | None, working_dir: str = ".", env: dict | None = None):
        self.address = address
        self._client = None
        self.working_dir = str(Path(working_dir).resolve())
        self.env = dict(env or {})

    @property
    def client(self):
        """Ray's JobSubmissionClient, connected at first use: the server starts (and serves files and
        batch records) while the cluster is still coming up; the advancer retries until it answers."""
        if self._client is None:
            self._client = submit.connect(self.address)
        return self._client

    def relative(self, config: str) -> str:
        """A config's path inside the working directory (what the job's command names)."""
        return submit._inside(config, self.working_dir)

    def plan(self, batch_id: str, argv: list[str], metadata: dict) -> Submission:
        """The submission of the command line `argv` (`runner batch ...`) for a batch."""
        env_vars = {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S), **self.env}
        runtime_env = {"working_dir": self.working_dir, "excludes": EXCLUDES, "env_vars": env_vars}
        key = job_key(batch_id)
        meta = {"runner": PROJECT, "runner_key": key, "kind": "batch", "batch": batch_id, **metadata}
        return Submission(key, shlex.join(argv), runtime_env, meta)

    def start(self, sub: Submission) -> str:
        """Submit (or attach to the live attempt); the submission id."""
        sid, _attached = submit.submit(self.client, sub)
        return sid

    def statuses(self) -> dict[str, tuple[str, str]]:
        """Every batch job's latest attempt: key -> (status, submission id); one call to the cluster."""
        latest: dict[str, tuple[int, str, str]] = {}
        for job in submit.ours(self.client):
            key = (job.metadata or {}).get("runner_key", "")
            attempt = submit._attempt(job.submission_id)
            if key.startswith("runner-batch_") and attempt >= latest.get(key, (-1, "", ""))[0]:
                latest[key] = (attempt, _status(job), job.submission_id)
        return {key: (status, sid) for key, (_, status, sid) in latest.items()}

    def status(self, batch_id: str) -> tuple[str | None, str | None]:
        """This batch's latest attempt, asked afresh (before an action that must not race a submit)."""
        attempts = submit.attempts_of(self.client, job_key(batch_id))
        if not attempts:
            return None, None
        return _status(attempts[-1]), attempts[-1].submission_id

    def stop(self, sid: str) -> None:
        """Ask the job to stop like SIGTERM: it commits what it has and exits."""
        self.client.stop_job(sid)

    def message(self, sid: str) -> str:
        """Why a job failed, one line (Ray's message, else its status)."""
        details = submit.info(self.client, sid)
        text = (details.message or "").strip().splitlines()
        code = getattr(details, "driver_exit_code", None)
        reason = text[-1] if text else str(details.status)
        return f"the batch's job {sid} ended {details.status} (exit {code}): {reason}"


def _status(job) -> str:
    status = str(job.status)
    return status if status in submit.TERMINAL else LIVE_JOB
