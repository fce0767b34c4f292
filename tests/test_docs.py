"""The documentation cannot drift: the configuration reference is regenerated from the pydantic models
and compared with the committed page, every config field has a description, and every relative link in
README.md and docs/ points at a file (and heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field

from jobs.eval.config import EvalConfig
from runner.config import JobConfig
from scripts import config_reference

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_configuration_reference_is_current():
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == config_reference.render(), "docs/configuration.md is stale: run " + (
        config_reference.COMMAND
    )


def test_every_config_field_has_a_description():
    models = [model for _title, model, _prefix, _intro in config_reference.roots()]
    assert JobConfig in models and EvalConfig in models
    for model in models:
        assert config_reference.missing_descriptions(model) == [], model.__name__


def test_a_field_without_description_is_found_in_nested_sections():
    class Inner(BaseModel):
        described: int = Field(1, description="has one")
        bare: int = 2

    class Outer(BaseModel):
        inner: Inner = Field(default_factory=Inner, description="a section")
        items: list[Inner] | None = Field(None, description="a list of sections")
        plain: str = "x"

    assert config_reference.missing_descriptions(Outer) == [
        "inner.bare",
        "plain",
    ]  # Inner once, where it is first documented


def test_every_field_is_in_the_reference():
    page = config_reference.render()
    for prefix, section, _only in config_reference.sections(JobConfig, ""):
        for name in section.model_fields:
            assert f"| `{prefix}{name}` |" in page
    for key in ("name", "scoring.scorer", "scoring.target_delimiter", "tasks[].name", "tasks[].scoring"):
        assert f"| `{key}` |" in page


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slug(m) for m in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


def broken_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def test_relative_links_resolve():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert len(pages) > 5
    found = [b for page in pages for b in broken_links(page)]
    assert found == []


def test_broken_links_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n[ok](other.md#a-heading) [self](#top) [web](https://example.com)\n"
        "[gone](missing.md) [bad anchor](other.md#nope)\n```\n[in code](ignored.md)\n```\n"
    )
    assert broken_links(page) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#nope (no such heading)",
    ]


def test_readme_is_short_and_its_test_command_is_the_ci_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 260
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    ci_command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    assert ci_command in blocks, "README's second Quickstart command must be .ci/run's command verbatim"


def test_the_readme_job_config_is_a_valid_config():
    import yaml

    from runner.config import build_config

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```yaml\n(.*?)\n```", readme, flags=re.S) if "model:" in b]
    assert blocks
    for block in blocks:
        cfg = build_config(yaml.safe_load(block))
        assert cfg.model.path and cfg.data.source


def missing_paths(page: Path) -> list[str]:
    """Repository paths the page names in backticks (`runner/engine/prefix.py`) that do not exist."""
    missing = []
    for named in re.findall(r"`((?:runner|jobs|scripts|tests|configs|docs)/[^`\s]*)`", page.read_text()):
        head, brace, rest = named.partition("{")
        options = rest.partition("}")
        paths = [head + o + options[2] for o in options[0].split(",")] if brace else [named]
        if not all(list(REPO.glob(p.rstrip("/"))) for p in paths):
            missing.append(f"{page.name}: {named}")
    return missing


def test_paths_named_in_the_docs_exist():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert [m for page in pages for m in missing_paths(page)] == []


def test_a_moved_module_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("`runner/cli/{run,nosuch}.py` `tests/data/model_configs/*/config.json` `runner/gone.py`")
    assert missing_paths(page) == ["page.md: runner/cli/{run,nosuch}.py", "page.md: runner/gone.py"]
