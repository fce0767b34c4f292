"""Resolve `model.path` on the driver before any replica starts: a wrong model is one line, in seconds.

A replica that cannot load its model would otherwise be restarted by Ray (each time downloading,
failing, retrying the hub), and the job would end minutes later with a network library's error. Here
transformers' own `AutoConfig` (through huggingface_hub) reads the model's config.json the way loading
will: a local directory, the hub cache, or the hub. Only config.json is read, never the weights.

The cache is tried first, so a cached model resolves offline. A hub id not in the cache is probed with
one HEAD request without retries (`get_hf_file_metadata`, short timeout): huggingface_hub's own
download retries a failed connection five times with back-off (about 25 s with no network), and
its typed errors (no such repo, gated, no such revision) say exactly what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

from runner.config import ModelConfig
from runner.engine.demo_model import SIZES, is_demo
from runner.errors import ConfigError, first_line

HUB_TIMEOUT_S = 5.0


def check_model(model: ModelConfig) -> None:
    """Raise a ConfigError naming `model.path` and the cause when the model cannot be resolved to a
    causal LM transformers can load."""
    path = model.path
    if is_demo(path):
        if path.split(":", 1)[1] not in SIZES:
            raise ConfigError(
                f"model.path: unknown demo model {path!r} (known: demo:{', demo:'.join(SIZES)})"
            )
        return
    if _looks_local(path):
        _check_local(path)
        config = _config(model, local_only=True)
    else:
        config = _hub_config(model)
    _check_causal_lm(model, config)


def _looks_local(path: str) -> bool:
    # A hub id is `name` or `owner/name`; anything else (./x, /x, ~/x, a/b/c) or an existing path is a
    # directory, and the hub's answer for it would only confuse ("Repo id must use alphanumeric chars").
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or Path(path).expanduser().exists()


def _check_local(path: str) -> None:
    local = Path(path).expanduser()
    if not local.exists():
        raise ConfigError(f"model.path: {path!r}: no such directory")
    if not (local / "config.json").is_file():
        raise ConfigError(f"model.path: {path!r} is not a model directory (no config.json in it)")


def _hub_config(model: ModelConfig):
    """A hub id's config: from the cache, else from the hub after one quick request that says why
    it is not there."""
    try:
        return _config(model, local_only=True)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - not in the cache (or unusable there): ask the hub below
        pass
    if _offline():
        raise ConfigError(
            f"model.path: {model.path!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
            "(download it first, or unset HF_HUB_OFFLINE)"
        )
    _probe_hub(model)
    return _config(model, local_only=False)


def _probe_hub(model: ModelConfig) -> None:
    from huggingface_hub import errors as hub
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(model.path, "config.json", revision=model.revision)
    try:
        get_hf_file_metadata(url, timeout=HUB_TIMEOUT_S, retry_on_errors=False)
    except hub.GatedRepoError:
        raise ConfigError(
            f"model.path: {model.path!r} is a gated repo: accept its terms on huggingface.co and set HF_TOKEN "
            "(or `hf auth login`)"
        ) from None
    except hub.RepositoryNotFoundError:
        raise ConfigError(
            f"model.path: {model.path!r}: no such model on the Hugging Face Hub (or a private one: set HF_TOKEN)"
        ) from None
    except hub.RevisionNotFoundError:
        raise ConfigError(f"model.revision: {model.revision!r} is not a revision of {model.path!r}") from None
    except hub.EntryNotFoundError:
        raise ConfigError(
            f"model.path: {model.path!r} has no config.json (not a transformers model)"
        ) from None
    except Exception as err:  # noqa: BLE001 - httpx's connection refused, DNS, timeout, proxy, a 5xx
        raise ConfigError(
            f"model.path: cannot reach the Hugging Face Hub for {model.path!r} ({_cause(err)}); "
            "check the network, or set HF_HUB_OFFLINE=1 to use the local cache"
        ) from None


def _config(model: ModelConfig, local_only: bool):
    """transformers' AutoConfig of the model; ConfigError when config.json names no architecture."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            os.path.expanduser(model.path),
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
            local_files_only=local_only,
        )
    except ValueError as err:
        if "model_type" in str(err):
            raise ConfigError(
                f"model.path: {model.path!r}: its config.json names no architecture (no `model_type`)"
            ) from None
        raise ConfigError(f"model.path: {model.path!r}: {first_line(err)}") from None
    except OSError as err:
        if local_only and not Path(model.path).expanduser().is_dir():
            raise  # not in the hub cache: the caller asks the hub
        raise ConfigError(f"model.path: cannot load {model.path!r}: {_cause(err)}") from None


def _check_causal_lm(model: ModelConfig, config) -> None:
    from runner import compat

    if (getattr(config, "auto_map", None) or {}).get("AutoModelForCausalLM") and model.trust_remote_code:
        return
    try:
        compat.causal_lm_class(config)
    except KeyError:
        raise ConfigError(
            f"model.path: {model.path!r} is a {type(config).__name__} "
            f"(architectures: {getattr(config, 'architectures', None) or 'none'}), "
            "not a causal LM transformers can load"
        ) from None


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cause(err: BaseException) -> str:
    """The innermost cause's one line: a network library's message says what failed (DNS, refused)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return first_line(err, type(err).__name__)
