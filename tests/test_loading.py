"""Model loading decisions (dtype, attention, bitsandbytes, device maps) and quantized generation on CPU."""

from __future__ import annotations

import pytest
import torch

from runner.config import ModelConfig, PlacementConfig, QuantizationConfig, SamplingConfig
from runner.engine import Engine, Request, loading
from runner.engine.loading import Devices, from_pretrained_kwargs, resolve_attention
from runner.errors import ConfigError

CPU = Devices(cuda=False, gpu_count=0, bf16=False)
TWO_GPUS = Devices(cuda=True, gpu_count=2, bf16=True)


def test_cpu_defaults_to_fp32_and_sdpa_with_a_logged_reason(caplog):
    with caplog.at_level("INFO"):
        kwargs = from_pretrained_kwargs(ModelConfig(path="m"), PlacementConfig(), CPU)
    assert kwargs["dtype"] == torch.float32 and kwargs["attn_implementation"] == "sdpa"
    assert "FlashAttention-2 not used" in caplog.text and "no CUDA GPU" in caplog.text


def test_gpu_replica_gets_bf16_and_an_auto_split_capped_by_max_memory():
    placement = PlacementConfig(gpus_per_replica=2, max_memory={0: "20GiB", 1: "18GiB", "cpu": "64GiB"})
    kwargs = from_pretrained_kwargs(ModelConfig(path="m", attention="sdpa"), placement, TWO_GPUS)
    assert kwargs["dtype"] == torch.bfloat16
    assert kwargs["device_map"] == "auto"
    assert kwargs["max_memory"] == {0: "20GiB", 1: "18GiB", "cpu": "64GiB"}


def test_single_gpu_replica_loads_whole_model_on_its_gpu():
    kwargs = from_pretrained_kwargs(
        ModelConfig(path="m", attention="sdpa"), PlacementConfig(), Devices(True, 1, False)
    )
    assert kwargs["device_map"] == {"": 0} and kwargs["dtype"] == torch.float16


def test_auto_attention_picks_fa2_only_when_everything_is_there(monkeypatch):
    monkeypatch.setattr(loading, "flash_attn_missing", lambda devices, dtype: [])
    assert resolve_attention("auto", TWO_GPUS, torch.bfloat16)[0] == "flash_attention_2"


def test_explicit_fa2_that_cannot_run_is_a_clear_error():
    with pytest.raises(
        ConfigError, match=r"^model.attention: flash_attention_2 cannot run here: .*no CUDA GPU"
    ):
        resolve_attention("flash_attention_2", CPU, torch.float32)


def test_bitsandbytes_configs_carry_the_settings():
    q8 = loading.bnb_config(QuantizationConfig(mode="8bit", llm_int8_threshold=5.0), torch.float16)
    assert q8.load_in_8bit and q8.llm_int8_threshold == 5.0
    q4 = loading.bnb_config(
        QuantizationConfig(mode="4bit", quant_type="fp4", double_quant=False), torch.bfloat16
    )
    assert q4.load_in_4bit and q4.bnb_4bit_quant_type == "fp4" and not q4.bnb_4bit_use_double_quant
    assert q4.bnb_4bit_compute_dtype == torch.bfloat16


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_quantized_model_loads_and_generates_on_cpu(tiny_model, mode):
    model = ModelConfig(path=tiny_model, quantization=QuantizationConfig(mode=mode, compute_dtype="float32"))
    engine = Engine(model, SamplingConfig(max_new_tokens=5))
    linear = type(engine.model.model.layers[0].self_attn.q_proj).__name__
    assert linear == {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}[mode]
    ids = engine.tokenize(["Hello there", "東京"])
    done = engine.generate([Request(str(i), p, 5) for i, p in enumerate(ids)])
    assert [len(c.token_ids[0]) <= 5 and c.error is None for c in done] == [True, True]


def test_device_map_and_max_memory_reach_from_pretrained(tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(path, **kwargs):
        seen.update(
            {k: v for k, v in kwargs.items() if k != "max_memory"}, max_memory=dict(kwargs["max_memory"])
        )
        return real(path, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    placement = PlacementConfig(device_map="auto", max_memory={"cpu": "2GiB"})
    engine = Engine(ModelConfig(path=tiny_model), SamplingConfig(max_new_tokens=2), placement=placement)
    assert seen["device_map"] == "auto" and seen["max_memory"] == {"cpu": "2GiB"}
    assert {p.device.type for p in engine.model.parameters()} == {"cpu"}


def test_missing_local_model_path_names_the_field(tmp_path):
    from runner.engine.model_source import check_model

    with pytest.raises(ConfigError, match=r"^model.path: .*no such directory"):
        check_model(ModelConfig(path=str(tmp_path / "nothing-here")))  # more cases: test_model_source.py
