"""Where arrays live and how steps run on them: processes, the mesh, shardings, strategies.

Data parallelism over one mesh axis, `data`, spanning every device of every process: the batch is
sharded on it and the train state replicated. Three ways to run the train step over it:
jit with shardings and BatchNorm statistics over the global batch (`bn_mode='sync'`); jit around
`jax.shard_map`, statistics per device (`bn_mode='per_device'`); and `jax.pmap`, the classic
per-device recipe. All three keep the state replicated, so evaluation, checkpoints and resumes
are the same code and a checkpoint restores onto any number of devices or processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from archs.training.errors import ConfigError

DATA_AXIS = "data"


# Environment variables of launchers that start one process per task (SLURM, Open MPI); JAX's
# own cluster detection reads them once `jax.distributed.initialize()` is called.
PROCESS_COUNT_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def initialize_distributed(
    coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> None:
    """Join a multi-process job: with explicit flags, or when a launcher started several
    processes (SLURM, Open MPI; Cloud TPU pods are detected by JAX itself). One process and no
    flags: nothing to do. Must run before anything touches a device."""
    explicit = (coordinator_address, num_processes > 0, process_id >= 0)
    if any(explicit):
        if not all(explicit):
            raise ConfigError(
                "multi-process runs need all of --coordinator_address, --num_processes and "
                f"--process_id; got {coordinator_address!r}, {num_processes}, {process_id}"
            )
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"--process_id={process_id} is not in [0, {num_processes})")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return
    launched = any(int(os.environ.get(v, "1")) > 1 for v in PROCESS_COUNT_VARS)
    if launched or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        jax.distributed.initialize()


def make_mesh() -> Mesh:
    """A 1-D mesh over all devices; Auto axes let XLA propagate shardings through the model."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array: the train state."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Split along the leading (example) axis over `data`: every batch array."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(name: str, batch_size: int, micro_batches: int = 1) -> None:
    """A global batch must split evenly over devices (and so over processes) and micro-batches."""
    devices = jax.device_count()
    if batch_size % devices:
        raise ConfigError(
            f"{name}={batch_size} is not divisible by the number of devices ({devices})"
        )
    if batch_size % (devices * micro_batches):
        raise ConfigError(
            f"{name}={batch_size} does not split into grad_accum_steps={micro_batches} equal "
            f"micro-batches on each of {devices} device(s)"
        )


def process_rows(global_batch_size: int) -> slice:
    """This process's rows of every global batch (all of them on one host)."""
    local = global_batch_size // jax.process_count()
    start = jax.process_index() * local
    return slice(start, start + local)


def global_batch(
    local: dict[str, np.ndarray], mesh: Mesh, per_device_axis: bool = False
) -> dict[str, jax.Array]:
    """Assemble the processes' local rows into global arrays sharded on `data`; with
    `per_device_axis` (pmap) shaped (devices, rows per device, ...). A batch of jax.Arrays is
    already global (the DALI pipeline's) and passes through."""
    if all(isinstance(v, jax.Array) for v in local.values()):
        return local
    sharding = batch_sharded(mesh)
    if per_device_axis:
        devices = jax.local_device_count()
        local = {k: v.reshape((devices, -1, *v.shape[1:])) for k, v in local.items()}
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def as_global(state: Any, mesh: Mesh) -> Any:
    """The replicated state as global arrays. Under pmap with several processes a step returns
    arrays of this process's devices only; evaluation and checkpoints need global ones."""
    leaf = jax.tree.leaves(state)[0]
    if jax.process_count() == 1 or leaf.is_fully_addressable is False:
        return state
    return multihost_utils.host_local_array_to_global_array(state, mesh, P())


def distribute_train_step(
    make_step: Callable[[str | None], Callable], mesh: Mesh, parallelism: str, bn_mode: str
) -> Callable:
    """The compiled-on-first-call train step of a strategy; `make_step(axis_name)` builds the
    pure step, per device when given an axis name. The state argument is donated."""
    if parallelism == "pmap":
        return jax.pmap(
            make_step(DATA_AXIS),
            axis_name=DATA_AXIS,
            in_axes=(None, 0),
            out_axes=None,
            donate_argnums=0,
        )
    step = make_step(DATA_AXIS if bn_mode == "per_device" else None)
    if bn_mode == "per_device":
        # Without replication checking, as under pmap: the step averages gradients itself
        # (checked, shard_map would already sum the gradients of the replicated parameters).
        step = jax.shard_map(
            step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(), check_vma=False
        )
    return jax.jit(
        step,
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=replicated(mesh),
        donate_argnums=0,
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a host pytree on every device."""
    return jax.device_put(tree, replicated(mesh))
