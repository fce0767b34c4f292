"""Shared fixtures: a tiny Llama model built locally once per session, and small datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Keep every Ray the tests start (in this process or a CLI subprocess) on the loopback address:
# Ray otherwise advertises the machine's routable IP even for a local single-node instance.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session", autouse=True)
def runner_cache(tmp_path_factory) -> Path:
    """Build demo models into a per-session cache (never the user's ~/.cache)."""
    cache = tmp_path_factory.mktemp("runner-cache")
    os.environ["RUNNER_CACHE"] = str(cache)
    return cache


@pytest.fixture(autouse=True)
def root_logging():
    """A CLI command run in-process points the root logger at that test's captured stderr, which
    pytest closes afterwards: put the root logger back as it was after each test."""
    import logging

    from runner import logs

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    saved = logs._terminal, logs._path, logs._verbose
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    logs._terminal, logs._path, logs._verbose = saved


@pytest.fixture(scope="session")
def tiny_model(runner_cache) -> str:
    """Path of the tiny Llama demo model (random weights, trained BPE tokenizer, chat template)."""
    from runner.engine.demo_model import resolve_demo

    return resolve_demo("demo:tiny-llama")


@pytest.fixture(scope="module")
def ray_cpu():
    """A fresh local Ray (2 CPUs, no GPU) on loopback for one test module."""
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",  # a fresh instance, never another session's cluster on this machine
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


PROMPTS = [
    "Hello",
    "Write a short poem about the sea and the sky and everything in between. " * 6,
    "東京 서울 القاهرة 🚀 naïve café",
    "What is the capital of France?",
    "x",
    "List five prime numbers and explain why each is prime, step by step, with examples. " * 3,
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    """A JSONL dataset with an id, a prompt, a carried column and a per-row max_new_tokens."""
    rows = [
        {"key": f"k{i}", "prompt": p, "topic": f"t{i % 3}", "limit": 4 + (i % 3) * 6}
        for i, p in enumerate(PROMPTS * 2)
    ]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def pytest_collection_modifyitems(config, items):
    """Modules with slow end-to-end tests first, each module's own order kept: with parallel workers
    (`-n 2 --dist loadfile`, README's command) the long modules start early instead of one of them
    starting last on a worker while the other idles. (Handing out the very longest first, by a
    measured list, put tests/test_signals.py beside the three-node cluster of tests/test_recipes.py,
    and under that load Ray ended a driver stopped by a process-group SIGTERM before its summary:
    see docs/reliability.md.)"""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)
