"""Where arrays live: the device mesh, the shardings of state and batch, per-process data slices.

Data parallelism over one mesh axis, `data`, spanning every device of every process: the batch is
sharded on it and the train state replicated, so BatchNorm statistics are computed over the
global batch (sync BN). Everything that knows about devices or processes is here, so that
multi-host start-up, a pmap strategy and per-device BatchNorm (shard_map) can be added beside it.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from archs.training.config import ConfigError

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    """A 1-D mesh over all devices; Auto axes let XLA propagate shardings through the model."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array: the train state."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Split along the leading (example) axis over `data`: every batch array."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(name: str, batch_size: int) -> None:
    """A global batch must split evenly over devices (and so over processes)."""
    devices = jax.device_count()
    if batch_size % devices:
        raise ConfigError(
            f"{name}={batch_size} is not divisible by the number of devices ({devices})"
        )


def process_rows(global_batch_size: int) -> slice:
    """This process's rows of every global batch (all of them on one host)."""
    local = global_batch_size // jax.process_count()
    start = jax.process_index() * local
    return slice(start, start + local)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble the processes' local rows into global arrays sharded on `data`."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a host pytree on every device."""
    return jax.device_put(tree, replicated(mesh))
