"""The Batches API: create, retrieve, list, cancel; each batch read back from the storage.

Creating a batch writes its request (`batch.json`) and returns it `validating`; the advancer
(`advance.py`) validates it, submits its job and follows it. Cancelling writes the `cancelling`
event, which the advancer turns into a stop of the job. While the job runs, `request_counts` are
counted from its committed Parquet parts at each read, so they are live and survive any restart.
"""

from __future__ import annotations

import logging
import time

from pydantic import BaseModel, ConfigDict, Field

from jobs.openai_batch.server.auth import Principal
from jobs.openai_batch.server.errors import APIError, not_found
from jobs.openai_batch.server.files import Files
from jobs.openai_batch.server.lifecycle import EVENTS, State, batch_object
from jobs.openai_batch.server.pages import page
from jobs.openai_batch.server.storage import Store, new_id, valid_id

log = logging.getLogger(__name__)

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
WINDOW_S = {"24h": 24 * 3600}


class CreateBatch(BaseModel):
    """The body of POST /v1/batches (OpenAI's BatchCreateParams)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(description="an uploaded file of purpose batch")
    endpoint: str = Field(description="/v1/chat/completions or /v1/completions")
    completion_window: str = Field(description="24h (OpenAI's only window)")
    metadata: dict[str, str] | None = Field(None, max_length=16, description="up to 16 string pairs")
    output_expires_after: dict | None = Field(None, description="accepted; outputs are kept until deleted")


def job_dir(batch_id: str) -> str:
    return f"batches/{batch_id}/job"


class Batches:
    """Batches on the store, per owner."""

    def __init__(self, store: Store, files: Files):
        self.store, self.files = store, files

    def create(self, who: Principal, body: CreateBatch) -> dict:
        if body.endpoint not in ENDPOINTS:
            raise APIError(
                400,
                f"endpoint {body.endpoint[:60]!r} is not supported here: use one of {', '.join(ENDPOINTS)}",
                param="endpoint",
            )
        if body.completion_window not in WINDOW_S:
            raise APIError(400, "completion_window must be '24h'", param="completion_window")
        for key, value in (body.metadata or {}).items():
            if len(key) > 64 or len(value) > 512:
                raise APIError(400, "metadata: keys up to 64 characters, values up to 512", param="metadata")
        source = self.files.record(who, body.input_file_id)
        if source["purpose"] != "batch":
            raise APIError(
                400,
                f"input_file_id: {source['id']} has purpose {source['purpose']!r}, not 'batch'",
                param="input_file_id",
            )
        now = int(time.time())
        request = {
            "id": new_id("batch"),
            "owner": who.owner,
            "input_file_id": source["id"],
            "input": source["content"],
            "endpoint": body.endpoint,
            "completion_window": body.completion_window,
            "metadata": body.metadata,
            "created_at": now,
            "created_ns": time.time_ns(),  # orders lists within one second
            "expires_at": now + WINDOW_S[body.completion_window],
        }
        self.store.write_once(f"batches/{request['id']}", "batch.json", request)
        return batch_object(State(request))

    def load(self, batch_id: str) -> State | None:
        """A batch's request and events from the storage (None when it has none)."""
        folder = f"batches/{batch_id}"
        request = self.store.read(f"{folder}/batch.json")
        if request is None:
            return None
        events = {name: self.store.read(f"{folder}/{name}.json") for name in EVENTS}
        return State(request, {name: doc for name, doc in events.items() if doc is not None})

    def state(self, who: Principal, batch_id: str) -> State:
        state = self.load(batch_id) if valid_id("batch", batch_id) else None
        if state is None or not who.may_see(state.request["owner"]):
            raise not_found("Batch", batch_id)
        return state

    def get(self, who: Principal, batch_id: str) -> dict:
        return self.public(self.state(who, batch_id))

    def public(self, state: State) -> dict:
        live = None
        if state.status in ("in_progress", "cancelling", "finalizing"):
            live = self.live_counts(state.request["id"])
        return batch_object(state, live)

    def live_counts(self, batch_id: str) -> dict | None:
        from jobs.openai_batch.results import request_counts

        try:
            return request_counts(self.store.uri(job_dir(batch_id)))
        except Exception as err:  # noqa: BLE001 - counts are best effort while parts are being written
            log.debug("request_counts(%s): %s", batch_id, err)
            return None

    def list(self, who: Principal, after: str | None, limit: int) -> dict:
        states = [self.load(name) for name in self.store.children("batches") if valid_id("batch", name)]
        mine = [s for s in states if s is not None and who.may_see(s.request["owner"])]
        mine.sort(
            key=lambda s: (s.request["created_at"], s.request.get("created_ns", 0), s.request["id"]),
            reverse=True,
        )  # newest first
        # Only the page's batches count their parts; the cursor needs the ids only.
        ids = [{"id": s.request["id"]} for s in mine]
        chosen = page(ids, after, limit, most=100)
        by_id = {s.request["id"]: s for s in mine}
        chosen["data"] = [self.public(by_id[item["id"]]) for item in chosen["data"]]
        return chosen

    def cancel(self, who: Principal, batch_id: str) -> dict:
        state = self.state(who, batch_id)
        if state.ended:
            if state.status == "cancelled":
                return self.public(state)
            raise APIError(
                409,
                f"batch {batch_id} is already {state.status}; it cannot be cancelled",
                code="batch_not_cancellable",
            )
        state.events["cancelling"] = self.store.write_once(
            f"batches/{batch_id}", "cancelling.json", {"at": int(time.time()), "by": who.owner}
        )
        return self.public(state)
