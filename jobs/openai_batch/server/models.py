"""The models a server offers: one job config each, named as the request's `model` names them.

A config serves its base model under `model.path` as written in the config and under each of its
`batch.served_model_name` names (as `runner batch` matches a request's `model`); each of its
`model.adapters` under the adapter's name. A batch runs as one job of one
config, so its requests may name that config's base model and adapters (per-request LoRA), not two
configs' models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from runner.config import ModelConfig
from runner.errors import ConfigError


@dataclass(frozen=True)
class Served:
    """One config the server runs batches with, and the model names it answers to."""

    config: str
    path: str
    aliases: tuple[str, ...]
    adapters: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return (self.path, *self.aliases, *self.adapters)


def read_served(config: str) -> Served:
    """The names one config serves (its `model` section validated; the rest is the job's to check)."""
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"--config: file not found: {config}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {config}: not valid YAML ({err})") from None
    if not isinstance(tree, dict) or not isinstance(tree.get("model"), dict):
        raise ConfigError(f"--config {config}: model: required section is missing")
    try:
        model = ModelConfig.model_validate(tree["model"])
    except ValueError as err:
        raise ConfigError(f"--config {config}: model: {str(err).splitlines()[-1].strip()}") from None
    aliases = (tree.get("batch") or {}).get("served_model_name") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ConfigError(f"--config {config}: batch.served_model_name: must be a list of names")
    return Served(config, model.path, tuple(aliases), tuple(model.adapters or ()))


class Models:
    """Name -> the config that serves it; a name served twice is refused at start."""

    def __init__(self, configs: list[str]):
        if not configs:
            raise ConfigError("--config: give at least one job config (the models this server serves)")
        self.served = [read_served(c) for c in configs]
        self._by_name: dict[str, Served] = {}
        for served in self.served:
            for name in served.names:
                other = self._by_name.setdefault(name, served)
                if other is not served:
                    raise ConfigError(
                        f"--config: model name {name!r} is served by both {other.config} and {served.config}; "
                        "rename one (batch.served_model_name, or the adapter)"
                    )

    def find(self, name: str) -> Served | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return list(self._by_name)
