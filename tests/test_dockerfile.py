"""The Dockerfile is the image the KubeRay manifests run: both parsed, and what one promises the other
holds (the tag, the working directory, Ray's version, the lock, a CUDA base, flash-attn optional)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = [REPO / "scripts" / "cluster" / name for name in ("rayjob.yaml", "raycronjob.yaml")]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuation lines joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        pending = ""
    return out


DOCKERFILE = (REPO / "Dockerfile").read_text()
STEPS = instructions(DOCKERFILE)


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for step in STEPS:
        if step[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(step)
    return out


def containers(doc: dict) -> list[dict]:
    spec = doc["spec"].get("jobTemplate", doc["spec"])["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def build_tags() -> set[str]:
    """The tags the Dockerfile's header says to build it with (`docker build -t TAG .`)."""
    return set(re.findall(r"docker build (?:--build-arg \S+ )*-t (\S+) \.", DOCKERFILE))


def test_the_manifests_run_the_image_the_dockerfile_builds():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    tags = build_tags()
    assert f"ghcr.io/your-org/hf-batch-runner:{version}" in tags
    workdir = [args for name, args in stages()[-1] if name == "WORKDIR"][-1]
    for manifest in MANIFESTS:
        doc = yaml.safe_load(manifest.read_text())
        for container in containers(doc):
            assert container["image"] in tags, f"{manifest.name}: {container['image']} is not built here"
            assert container["workingDir"] == workdir
        assert f"docker build -t ghcr.io/your-org/hf-batch-runner:{version} ." in manifest.read_text()


def test_rays_version_is_the_locked_one_everywhere():
    locked = re.search(r"^ray==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE).group(1)
    for manifest in MANIFESTS:
        spec = yaml.safe_load(manifest.read_text())["spec"]
        assert spec.get("jobTemplate", spec)["rayClusterSpec"]["rayVersion"] == locked


def test_a_cuda_base_the_lock_and_flash_attn_optional():
    froms = [args for name, args in STEPS if name == "FROM"]
    assert len(froms) == 2 and all(f.startswith("nvidia/cuda:") for f in froms)
    assert "-devel-" in froms[0] and "-runtime-" in froms[1]  # nvcc to build flash-attn; a lean runtime
    runs = [args for name, args in stages()[0] if name == "RUN"]
    installs = [cmd for run in runs for cmd in run.split("&&") if "pip install" in cmd and "-e" in cmd]
    assert installs and all("-c constraints.txt" in cmd for cmd in installs), installs
    flash = next(run for run in runs if "[flash]" in run)
    assert '"${FLASH_ATTN}" = "1"' in flash
    assert ("ARG", "FLASH_ATTN=0") in stages()[0]  # off unless asked for
    lock_python = re.search(r"Python (\d+\.\d+)", (REPO / "constraints.txt").read_text()).group(1)
    assert ("ARG", f"PYTHON={lock_python}") in stages()[0] and ("ARG", f"PYTHON={lock_python}") in stages()[1]


def test_the_image_has_runner_and_ray_on_its_path():
    final = stages()[-1]
    env = " ".join(args for name, args in final if name == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env
    copied = [args for name, args in final if name == "COPY"]
    assert "--from=build /opt/venv /opt/venv" in copied and "--from=build /app /app" in copied
    checks = [shlex.split(args) for name, args in final if name == "RUN"]
    assert any("runner" in check and "ray" in check for check in checks)


def test_the_parser_reads_continuations_and_skips_comments():
    text = "# c\nFROM a AS b\nRUN x \\\n && y\n\n# d\nENV A=1\n"
    assert instructions(text) == [("FROM", "a AS b"), ("RUN", "x && y"), ("ENV", "A=1")]
    dockerignore = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in dockerignore and ".git" in dockerignore and "outputs" in dockerignore
