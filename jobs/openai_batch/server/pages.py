"""OpenAI's cursor pages: `{"object": "list", "data", "first_id", "last_id", "has_more"}`, the next
page asked for with `after=<last id>` (what the `openai` client's auto-pagination sends)."""

from __future__ import annotations

from jobs.openai_batch.server.errors import APIError


def page(items: list[dict], after: str | None, limit: int, most: int) -> dict:
    """One page of `items` (already in the list's order) starting after the id `after`."""
    if not 1 <= limit <= most:
        raise APIError(400, f"limit must be between 1 and {most} (got {limit})", param="limit")
    start = 0
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise APIError(400, f"after: no object {after[:80]!r} in this list", param="after")
        start = ids.index(after) + 1
    data = items[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(items),
    }
