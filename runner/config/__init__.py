"""Job configuration: pydantic models loaded from YAML plus ``--set a.b=c`` overrides.

Every model forbids unknown keys, so a typo fails with its dotted path instead of being ignored.
`load_config` is the one entry point; `ConfigError` carries a one-line message naming the field. One
module per section: model + placement (`model.py`), data (`data.py`), sampling + batching
(`generation.py`), the whole job and its result hash (`job.py`), loading (`load.py`); the prompt
template's sandbox and checks (`template.py`).
"""

from runner.config.base import parse_size
from runner.config.data import DataConfig, PromptConfig
from runner.config.generation import BatchingConfig, SamplingConfig
from runner.config.job import RESULT_SECTIONS, JobConfig, OutputConfig, RayConfig, RetryConfig
from runner.config.load import apply_overrides, build_config, load_config
from runner.config.model import ModelConfig, PlacementConfig, QuantizationConfig

__all__ = [
    "RESULT_SECTIONS",
    "BatchingConfig",
    "DataConfig",
    "JobConfig",
    "ModelConfig",
    "OutputConfig",
    "PlacementConfig",
    "PromptConfig",
    "QuantizationConfig",
    "RayConfig",
    "RetryConfig",
    "SamplingConfig",
    "apply_overrides",
    "build_config",
    "load_config",
    "parse_size",
]
