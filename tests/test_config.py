"""Config loading: YAML + --set overrides, and one-line errors that name the field."""

from __future__ import annotations

import pytest

from runner.config import PlacementConfig, build_config, load_config, parse_size
from runner.errors import ConfigError
from runner.orchestration.cluster import plan_pool

BASE = {"model": {"path": "demo:tiny-llama"}, "data": {"source": "x.jsonl"}}


def tree(**sections):
    out = {k: dict(v) for k, v in BASE.items()}
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out


def test_yaml_and_overrides_are_typed(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "model: {path: demo:tiny-llama}\ndata: {source: in.jsonl}\nsampling: {max_new_tokens: 7}\n"
    )
    cfg = load_config(path, ["sampling.temperature=0.7", "data.carry_columns=[a, b]", "model.dtype=bfloat16"])
    assert cfg.sampling.max_new_tokens == 7 and cfg.sampling.temperature == 0.7
    assert cfg.data.carry_columns == ["a", "b"] and cfg.model.dtype == "bfloat16"
    assert cfg.data.prompt.column == "prompt"  # the default prompt source


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("model", {"pth": "x"}, "model.pth: unknown key"),
        ("sampling", {"max_new_tokens": "many"}, "sampling.max_new_tokens:"),
        ("sampling", {"temperature": -1}, "sampling.temperature:"),
        ("model", {"attention": "flash"}, "model.attention:"),
        ("model", {"quantization": {"mode": "3bit"}}, "model.quantization.mode:"),
        ("placement", {"max_memory": {"0": "lots"}}, "placement.max_memory: unreadable size 'lots'"),
        ("placement", {"max_memory": {"gpu0": "2GiB"}}, "placement.max_memory: unknown device 'gpu0'"),
        ("placement", {"gpus_per_replica": 1, "max_memory": {"0": "1GiB", "1": "1GiB"}}, "placement:"),
        ("data", {"prompt": {"column": "a", "template": "{{ b }}"}}, "data.prompt: set exactly one"),
    ],
)
def test_bad_values_name_the_field(section, values, message):
    with pytest.raises(ConfigError) as err:
        build_config(tree(**{section: values}))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_required_field():
    with pytest.raises(ConfigError, match=r"^model: required field is missing$"):
        build_config({"data": {"source": "x"}})


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(None, ["sampling"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_sizes_parse_with_binary_and_decimal_units():
    assert parse_size("20GiB") == 20 * 2**30
    assert parse_size("600MB") == 600 * 10**6
    with pytest.raises(ValueError, match="unreadable size"):
        parse_size("20 gigs")


def test_result_hash_tracks_only_settings_that_change_outputs():
    a = build_config(tree())
    assert (
        a.result_hash()
        == build_config(tree(output={"path": "elsewhere"}, placement={"replicas": 3})).result_hash()
    )
    assert a.result_hash() != build_config(tree(sampling={"max_new_tokens": 5})).result_hash()


def test_pool_defaults_to_all_gpus_divided_by_replica_size():
    pool = plan_pool(PlacementConfig(gpus_per_replica=2), [4, 4])
    assert (pool.replicas, pool.gpus_per_replica) == (4, 2)
    assert plan_pool(PlacementConfig(), []).gpus_per_replica == 0  # no GPUs: CPU replicas


def test_pool_rejects_replicas_larger_than_any_node():
    with pytest.raises(
        ConfigError, match=r"placement.gpus_per_replica: 4 GPUs per replica, but the largest node has 2"
    ):
        plan_pool(PlacementConfig(gpus_per_replica=4), [2, 2])
    with pytest.raises(ConfigError, match="placement.replicas"):
        plan_pool(PlacementConfig(gpus_per_replica=1, replicas=3), [2])
