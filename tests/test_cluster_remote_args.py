"""The replicas' restart bounds reach Ray without the deprecated `map_batches(**ray_remote_args)`
(runner.compat.map_batches_on_actors): no deprecation warning, and the bounds still hold."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pyarrow as pa
import pytest

from runner import compat
from runner.config import RetryConfig
from runner.orchestration.cluster import replica_remote_args


class DiesOnce:
    """A replica whose process dies on its first batch (the marker file survives the restart)."""

    def __init__(self, marker: str):
        self.marker = Path(marker)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not self.marker.exists():
            self.marker.write_text("died")
            os._exit(1)
        return batch


def pool(ray, ds, marker: Path, retries: RetryConfig):
    # Pickled by value: Ray's workers cannot import a test module by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return compat.map_batches_on_actors(
        ds,
        DiesOnce,
        fn_constructor_kwargs={"marker": str(marker)},
        batch_size=2,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.5,
        **replica_remote_args(retries),
    )


def test_restart_bounds_hold_without_the_deprecation_warning(ray_cpu, tmp_path):
    import ray.data
    from ray.exceptions import RayActorError

    ds = ray.data.from_blocks([pa.table({"a": [1, 2, 3, 4]})])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Ray's RayDeprecationWarning for ray_remote_args would raise
        restarted = pool(ray_cpu, ds, tmp_path / "one", RetryConfig(replica_restarts=1))
        bounded = pool(ray_cpu, ds, tmp_path / "none", RetryConfig(replica_restarts=0))
    rows = restarted.take_all()
    assert sorted(r["a"] for r in rows) == [1, 2, 3, 4]  # died once, restarted, its batch ran again
    with pytest.raises(Exception) as err:  # noqa: PT011 - Ray wraps the actor's death in its own types
        bounded.take_all()
    assert (
        isinstance(err.value, RayActorError) or "RayActorError" in repr(err.value) or "died" in str(err.value)
    )
