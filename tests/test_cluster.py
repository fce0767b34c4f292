"""Placement on a real multi-node Ray cluster (two nodes on 127.0.0.1, fake GPUs)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from jobs.generate.job import run
from runner.errors import ConfigError
from tests.test_job_ray import job_config

pytestmark = pytest.mark.slow  # whole jobs on a Ray with fake GPUs


@pytest.fixture(scope="module")
def two_node_cluster():
    """A head without GPUs and two worker nodes with 2 fake GPUs each."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    import ray

    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1, num_gpus=2)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_two_gpu_replicas_spread_over_the_nodes(two_node_cluster, prompts_file, tmp_path):
    cfg = job_config(
        prompts_file,
        tmp_path / "out",
        placement={"gpus_per_replica": 2, "cpus_per_replica": 0.25},
        ray={"address": two_node_cluster.address},
    )
    summary = run(cfg)
    assert summary["replicas"] == 2 and summary["gpus_per_replica"] == 2  # 4 GPUs // 2
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert len({r["id"] for r in rows}) == len(rows) == 12
    assert {r["replica"].split("gpus=")[1] for r in rows} <= {"0,1", "1,0"}  # each replica holds a GPU pair


def test_replica_larger_than_any_node_fails_before_work(two_node_cluster, prompts_file, tmp_path):
    cfg = job_config(
        prompts_file,
        tmp_path / "out",
        placement={"gpus_per_replica": 3},
        ray={"address": two_node_cluster.address},
    )
    with pytest.raises(
        ConfigError, match=r"placement.gpus_per_replica: 3 GPUs per replica, but the largest node has 2"
    ):
        run(cfg)
    assert not list((tmp_path / "out").glob("part-*.parquet"))


def test_replica_start_error_reaches_the_driver_as_our_one_line_error(
    two_node_cluster, prompts_file, tmp_path
):
    """On a cluster the driver cannot pre-check the GPU nodes: the replica's own error comes back."""
    cfg = job_config(
        prompts_file,
        tmp_path / "out",
        model={"attention": "flash_attention_2"},
        placement={"gpus_per_replica": 2, "cpus_per_replica": 0.25},
        retries={"replica_restarts": 0},
        ray={"address": two_node_cluster.address},
    )
    with pytest.raises(
        ConfigError, match=r"^model.attention: flash_attention_2 cannot run here: .*by a replica\)$"
    ):
        run(cfg)
