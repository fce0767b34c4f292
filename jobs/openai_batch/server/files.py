"""The Files API: upload (bounded in size, validated line by line), retrieve, list, delete, content.

Each file belongs to the owner of the key that uploaded it (a batch's output files to the batch's
owner); other keys get 404 for it, as if it did not exist. The filename a client sends is kept as
metadata only: the content is stored under the file's id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import BinaryIO

from openai.types import FileObject

from jobs.openai_batch.server.auth import Principal
from jobs.openai_batch.server.errors import APIError, not_found
from jobs.openai_batch.server.pages import page
from jobs.openai_batch.server.storage import Store, TooLarge, new_id, valid_id

UPLOAD_PURPOSES = ("batch",)
MAX_FILENAME = 255


@dataclass(frozen=True)
class Limits:
    """What one upload may hold (OpenAI's own limits by default: 200 MB, 50,000 requests)."""

    max_file_bytes: int = 200 * 1024 * 1024
    max_requests: int = 50_000


def public(record: dict) -> dict:
    """The record as OpenAI's FileObject (owner and storage path left out)."""
    fields = {k: v for k, v in record.items() if k in FileObject.model_fields}
    return FileObject.model_validate(fields).model_dump(mode="json")


class Files:
    """Files on the store, per owner."""

    def __init__(self, store: Store, limits: Limits):
        self.store, self.limits = store, limits

    def upload(self, who: Principal, source: BinaryIO, filename: str, purpose: str) -> dict:
        if purpose not in UPLOAD_PURPOSES:
            raise APIError(
                400, f"purpose {purpose[:40]!r} is not supported here: use 'batch'", param="purpose"
            )
        file_id = new_id("file")
        folder = f"files/{file_id}"
        try:
            size = self.store.save(folder, "content.jsonl", source, self.limits.max_file_bytes)
        except TooLarge:
            self.store.delete_dir(folder)
            raise _too_large(self.limits.max_file_bytes) from None
        self._validate(folder, size)
        record = {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": int(time.time()),
            "created_ns": time.time_ns(),  # orders lists within one second
            "filename": (filename or "upload.jsonl")[:MAX_FILENAME],
            "purpose": purpose,
            "status": "processed",
            "owner": who.owner,
            "content": f"{folder}/content.jsonl",
        }
        self.store.write_once(folder, "file.json", record)
        return public(record)

    def _validate(self, folder: str, size: int) -> None:
        from jobs.openai_batch.requests import validate_file

        if size == 0:
            self.store.delete_dir(folder)
            raise APIError(
                400, "the file is empty: one request a line (JSONL)", code="invalid_file", param="file"
            )
        uri = self.store.uri(f"{folder}/content.jsonl")
        errors = validate_file(uri, max_lines=self.limits.max_requests)
        if errors:
            self.store.delete_dir(folder)
            first = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            message = f"line {first.get('line')}: {first.get('message')}{more}"
            raise APIError(400, message, code=first.get("code") or "invalid_file", param="file")

    def add_output(self, file_id: str, owner: str, content: str, filename: str) -> None:
        """Record a batch's output or error file (written by the job) as a file of the batch's owner."""
        record = {
            "id": file_id,
            "object": "file",
            "bytes": self.store.size(content),
            "created_at": int(time.time()),
            "created_ns": time.time_ns(),
            "filename": filename,
            "purpose": "batch_output",
            "status": "processed",
            "owner": owner,
            "content": content,
        }
        self.store.write_once(f"files/{file_id}", "file.json", record)

    def record(self, who: Principal, file_id: str) -> dict:
        """The stored record of a file this key may see; 404 otherwise (also for a malformed id)."""
        record = self.store.read(f"files/{file_id}/file.json") if valid_id("file", file_id) else None
        if record is None or not who.may_see(record["owner"]):
            raise not_found("File", file_id)
        return record

    def get(self, who: Principal, file_id: str) -> dict:
        return public(self.record(who, file_id))

    def list(self, who: Principal, purpose: str | None, order: str, after: str | None, limit: int) -> dict:
        records = [self.store.read(f"files/{name}/file.json") for name in self.store.children("files")]
        mine = [r for r in records if r and who.may_see(r["owner"])]
        mine = [r for r in mine if purpose is None or r["purpose"] == purpose]
        if order not in ("asc", "desc"):
            raise APIError(400, f"order must be asc or desc (got {order[:20]!r})", param="order")
        mine.sort(key=lambda r: (r["created_at"], r.get("created_ns", 0), r["id"]), reverse=order == "desc")
        return page([public(r) for r in mine], after, limit, most=10_000)

    def delete(self, who: Principal, file_id: str) -> dict:
        record = self.record(who, file_id)
        # The record goes first: a half-done delete leaves content without a record, never the reverse.
        self.store.delete_file(f"files/{file_id}/file.json")
        self.store.delete_file(record["content"])
        self.store.delete_dir(f"files/{file_id}")
        return {"id": file_id, "object": "file", "deleted": True}

    def content(self, who: Principal, file_id: str):
        """The file's bytes, streamed."""
        record = self.record(who, file_id)
        if not self.store.exists(record["content"]):
            raise not_found("File", file_id)
        return self.store.stream(record["content"])


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the file is larger than this server's limit of {limit} bytes",
        code="file_too_large",
        param="file",
    )
