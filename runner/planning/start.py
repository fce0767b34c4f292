"""The job's start check: `auto` placement takes the plan's values, and a plan that says the model
does not fit fails the job before any replica loads it (ConfigError: exit 2, the planner's line).

Run by the driver once Ray is connected (runner.orchestration.job), with the cluster's nodes as `runner.orchestration.cluster.
hardware` reads them. A CPU-only cluster is planned only when something is `auto` (memory is seldom
what limits it, and the check would import torch on the driver for nothing); a GPU cluster whose
GPU memory Ray does not report is planned only when something is `auto`, and then must be labelled.
"""

from __future__ import annotations

import logging

from runner.config import JobConfig
from runner.errors import ConfigError, first_line
from runner.planning import plan
from runner.planning.hardware import MEMORY_LABEL, Hardware

log = logging.getLogger(__name__)


def start_check(cfg: JobConfig, hardware: Hardware) -> JobConfig:
    """The config the replicas get: `auto` placement resolved (each value logged with its reason)."""
    placement = cfg.placement
    auto = [name for name in ("gpus_per_replica", "max_memory") if getattr(placement, name) == "auto"]
    if not auto and not hardware.has_gpus:
        return cfg
    if hardware.has_gpus and hardware.gpu_memory is None:
        if auto:
            raise ConfigError(
                f"placement.{auto[0]}: auto needs each GPU's memory, which this Ray cluster does not report: "
                f'start its nodes with --labels=\'{{"{MEMORY_LABEL}": "80GiB"}}\' or set a value'
            )
        log.info("plan: skipped (the cluster's GPU memory is not known: label nodes with %s)", MEMORY_LABEL)
        return cfg
    result = _plan(cfg, hardware, auto)
    if result is None:
        return cfg
    from runner.planning.report import verdict_line  # imports torch: only once a plan is made

    line = verdict_line(result)
    log.info("plan: %s", line)
    if result.verdict == "no":
        raise ConfigError(f"plan: {line} (see: runner plan CONFIG --cluster)")
    update = {name: getattr(result, name) for name in auto}
    for name in auto:
        log.info("placement.%s: auto -> %s (%s)", name, update[name], result.reasons.get(name, ""))
    return cfg.model_copy(update={"placement": placement.model_copy(update=update)})


def _plan(cfg: JobConfig, hardware: Hardware, auto: list[str]):
    """The plan; None (logged) when it cannot be made and nothing depends on it. A model the planner
    cannot build (remote code that fails on the meta device, bitsandbytes missing on the driver while
    the GPU nodes have it) must not stop a job whose placement is explicit."""
    try:
        return plan(cfg, hardware)
    except Exception as err:  # noqa: BLE001 - any failure to plan is reported, never a crash here
        if auto:
            raise ConfigError(
                f"placement.{auto[0]}: auto, but the job cannot be planned: {first_line(err)}"
            ) from None
        log.warning("plan: skipped (%s)", first_line(err, type(err).__name__))
        return None
