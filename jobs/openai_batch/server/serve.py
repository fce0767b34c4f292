"""Wiring: the store, keys, models, cluster and advancer behind one app, and running it with uvicorn."""

from __future__ import annotations

import logging

from jobs.openai_batch.server.advance import Advancer, Loop
from jobs.openai_batch.server.app import create_app
from jobs.openai_batch.server.auth import Keys
from jobs.openai_batch.server.batches import Batches
from jobs.openai_batch.server.files import Files, Limits
from jobs.openai_batch.server.models import Models
from jobs.openai_batch.server.runs import Runs
from jobs.openai_batch.server.storage import Store

log = logging.getLogger(__name__)


def build(
    storage: str,
    keys: Keys,
    configs: list[str],
    address: str | None,
    working_dir: str = ".",
    limits: Limits | None = None,
    poll_s: float = 2.0,
    env: dict | None = None,
):
    """The app, with its advancer loop (started and stopped with the app)."""
    limits = limits or Limits()
    models = Models(configs)
    runs = Runs(address, working_dir, env)
    for served in models.served:
        runs.relative(served.config)  # a config outside the shipped directory fails now, not per batch
    store = Store(storage)
    files = Files(store, limits)
    batches = Batches(store, files)
    loop = Loop(Advancer(batches, models, runs, limits.max_requests), poll_s)
    return create_app(keys, files, batches, models, loop)


def serve(app, host: str, port: int) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "serving on %s: reachable from other machines; put TLS in front of it (docs/serve.md)", host
        )
    uvicorn.run(app, host=host, port=port, log_level="info")
