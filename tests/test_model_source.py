"""A model that cannot be resolved fails on the driver, before Ray starts, in one line naming
`model.path` and the cause, exit 2, in seconds. Offline: the hub is a local HTTP server answering
as huggingface.co does (its X-Error-Code headers), or a closed port."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner.config import ModelConfig
from runner.engine.model_source import check_model
from runner.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def model_dir(tmp_path: Path, config: dict | None) -> str:
    folder = tmp_path / "model"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, r"is not a model directory \(no config.json in it\)"),
        ({"hidden_size": 8}, r"its config.json names no architecture \(no `model_type`\)"),
        ({"model_type": "vit", "architectures": ["ViTModel"]}, r"is a ViTConfig .*not a causal LM"),
    ],
)
def test_a_local_directory_that_is_not_a_causal_lm(tmp_path, config, message):
    with pytest.raises(ConfigError, match=r"^model.path: .*" + message):
        check_model(ModelConfig(path=model_dir(tmp_path, config)))


def test_no_such_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"^model.path: '.*/nothing-here': no such directory$"):
        check_model(ModelConfig(path=str(tmp_path / "nothing-here")))


def test_a_model_directory_and_a_demo_model_resolve(tiny_model):
    check_model(ModelConfig(path=tiny_model))
    check_model(ModelConfig(path="demo:tiny-llama"))
    with pytest.raises(ConfigError, match="unknown demo model 'demo:huge'"):
        check_model(ModelConfig(path="demo:huge"))


def test_a_hub_id_offline_and_not_cached(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ConfigError, match=r"^model.path: 'nosuch/model-xyz' is not in the local .* HF_HUB_OFFLINE"
    ):
        check_model(ModelConfig(path="nosuch/model-xyz"))


class FakeHub(BaseHTTPRequestHandler):
    """Answers a config.json HEAD as huggingface.co does for a missing, a gated or a present repo."""

    answers = {
        "nosuch": (404, "RepoNotFound"),
        "gated": (401, "GatedRepo"),
        "norev": (404, "RevisionNotFound"),
        "noconfig": (404, "EntryNotFound"),
    }

    def do_HEAD(self):  # noqa: N802 - http.server's name
        owner = self.path.strip("/").split("/")[0]
        status, code = self.answers[owner]
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        constants.ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}",
    )
    yield
    server.shutdown()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nosuch/model-xyz", r"^model.path: 'nosuch/model-xyz': no such model on the Hugging Face Hub"),
        ("gated/llama", r"^model.path: 'gated/llama' is a gated repo: .*HF_TOKEN"),
        ("norev/m", r"^model.revision: 'v9' is not a revision of 'norev/m'$"),
        ("noconfig/m", r"^model.path: 'noconfig/m' has no config.json"),
    ],
)
def test_the_hub_says_why_a_model_is_not_there(fake_hub, path, message):
    revision = "v9" if path.startswith("norev") else None
    with pytest.raises(ConfigError, match=message):
        check_model(ModelConfig(path=path, revision=revision))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(tmp_path: Path, model: str, **env) -> tuple[subprocess.CompletedProcess, float]:
    """The command's result and the CPU seconds it used: on a shared test machine the wall time
    measures the neighbours (3.4 s of CPU took 19 s of wall at a load of 30 on 2 cores)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(ROOT / "configs" / "demo.yaml")]
        + ["--set", f"model.path={model}", "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=tmp_path,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


@pytest.mark.parametrize(
    ("model", "env", "message"),
    [
        (
            "nosuch/model-xyz",
            {"HF_HUB_OFFLINE": "1"},
            "is not in the local Hugging Face cache and HF_HUB_OFFLINE",
        ),
        (
            "nosuch/model-xyz",
            {"HF_ENDPOINT": "closed"},
            "cannot reach the Hugging Face Hub for 'nosuch/model-xyz'",
        ),
        ("./no-such-dir", {}, "'./no-such-dir': no such directory"),
    ],
)
def test_the_cli_fails_before_ray_in_one_line_exit_2(tmp_path, model, env, message):
    if env.get("HF_ENDPOINT") == "closed":
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HUB_OFFLINE": "0"}
    done, seconds = run_cli(tmp_path, model, **env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines == [f"error: model.path: {lines[0].split('model.path: ', 1)[1]}"] and message in lines[0]
    assert seconds < 10, f"took {seconds:.1f} CPU seconds"
    assert not (tmp_path / "out").exists()  # nothing written: it failed before the output directory
