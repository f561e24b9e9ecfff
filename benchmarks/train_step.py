"""One train step's speed: `python -m benchmarks.train_step --model resnet50 --json`.

Prints the benchmark object of docs/design.md: `compile_s` (lowering plus XLA compilation of
the jitted step), `step_ms` (the median of `--steps` timed steps after one warm-up step, each
waited for), `images_per_sec` (global batch / median step), `devices`, `device_kind`,
`train_gflops_per_image` (XLA's cost analysis of the whole step, forward, backward and
optimizer update, lowered for the CPU: see `train_gflops_per_image`), `peak_gflops` (the best
rate of a square matmul of random values in the compute dtype on one device, times the devices)
and `mfu` (achieved train GFLOP/s over that peak); beside them `peak_memory_mb` (XLA's memory
analysis: arguments + outputs - donated aliases + temporaries, per device) and the settings.

The step is the training system's own, set up as `archs.training.loop` does: the model built
with `archs.fast_conv.for_backend` convolutions and split by `steps.split_model`,
`steps.make_train_step` through `parallel.distribute_train_step` (jit, sync BatchNorm: the
state replicated and donated, the batch sharded on the mesh's `data` axis), SGD with Nesterov
momentum and weight decay from `optim.make_optimizer`. It is fed one synthetic uint8 batch
already on the devices (host augmentation and input excluded; `benchmarks.input_pipeline`
measures those), and `time_steps` / `summarize` are shared with `benchmarks.flax_example` so
both are timed alike.

`--model-kwargs '{"scan_blocks": true}'` passes model overrides; `--compilation-cache DIR` turns
on JAX's persistent compilation cache (a second run then loads the executable instead of
compiling it); `--peak-size N` sets the peak matmul's size (default 2048 on CPU, else 8192).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh

import archs
from archs import fast_conv
from archs.training import optim, parallel, steps
from archs.training.config import base_config
from archs.training.trainer import build_trainer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def synthetic_batch(batch_size: int, image_size: int, num_classes: int) -> dict[str, np.ndarray]:
    """Random uint8 images and labels, as the input pipelines deliver them."""
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8),
        "label": rng.integers(0, num_classes, (batch_size,), np.int32),
    }


def device_mesh(count: int | None = None, platform: str | None = None) -> Mesh:
    """The training mesh over all devices, or over the first `count` (of `platform`'s)."""
    if (count is None or count == jax.device_count()) and platform is None:
        return parallel.make_mesh()
    devices = jax.devices(platform)
    count = count or len(devices)
    if not 1 <= count <= len(devices):
        raise ValueError(f"devices={count} is not in 1..{len(devices)}")
    return jax.make_mesh(
        (count,), (parallel.DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices[:count]
    )


def build_train_step(
    name: str,
    *,
    batch_size: int,
    image_size: int,
    dtype: Any,
    mesh: Mesh,
    model_kwargs: dict | None = None,
) -> tuple[Callable, steps.TrainState, dict[str, jax.Array]]:
    """(jitted step, replicated train state, sharded synthetic batch); lower and call it under
    `mesh`. The model's convolutions are `fast_conv.for_backend` of the mesh's platform, as the
    training system builds them. Built outside the mesh context, eager model initialization
    shares its compiled operations with models built elsewhere in the process."""
    info = archs.model_info(name)
    model = archs.create_model(
        name,
        rngs=nnx.Rngs(0),
        dtype=dtype,
        conv=fast_conv.for_backend(mesh.devices.flat[0].platform),
        **(model_kwargs or {}),
    )
    config = base_config()
    config.update(model=name, batch_size=batch_size, nesterov=True, schedule="cosine")
    config.dtype = jnp.dtype(dtype).name
    trainer, state, _ = build_trainer(
        config,
        model,
        schedule=optim.learning_rate_schedule(config, 1000, 100_000),
        mean=info.mean,
        std=info.std,
        aux_weight=info.aux_weight,
        augment=steps.device_augment("none", 0),
        mesh=mesh,
    )
    batch = parallel.global_batch(synthetic_batch(batch_size, image_size, info.num_classes), mesh)
    return trainer.train_step, state, batch


def compile_step(jitted: Any, *args: Any) -> tuple[Any, float]:
    """The compiled executable of `jitted` (jit or pmap) for `args`, and the seconds it took."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def time_steps(
    step: Callable, state: Any, batch: Any, steps: int, warmup: int = 1
) -> tuple[list[float], Any]:
    """Seconds of each of `steps` calls `state = step(state, batch)` after `warmup` untimed ones
    (every call waited for, so a step's time is its whole device time), and the last state
    (the one to pass on when `step` donates its input)."""
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        state = jax.block_until_ready(step(state, batch))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times, state


def xla_flops(lowered: Any) -> float:
    """XLA's FLOPs of one call of a function lowered for the CPU, per device."""
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    if not cost or "flops" not in cost:
        raise ValueError(f"XLA gave no cost analysis for {jax.default_backend()}")
    return float(cost["flops"])


def peak_memory_bytes(compiled: Any) -> float:
    """XLA's peak memory of one call of a compiled executable, per device."""
    mem = compiled.memory_analysis()
    return float(
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )


def train_gflops_per_image(
    name: str, image_size: int, dtype: Any, model_kwargs: dict | None = None, batch_size: int = 2
) -> float:
    """The training GFLOPs per image of `name`'s train step (forward, backward and update):
    XLA's cost analysis of the step lowered for one CPU device, always without `scan_blocks`,
    `scan_stages` and `remat`. The CPU, because on a GPU the lowered module has no cost analysis
    and the compiled one's convolutions are cuDNN calls that it does not count; unscanned,
    because XLA counts a loop body once and recomputation again."""
    loops = ("scan_blocks", "scan_stages", "remat")
    plain = {k: v for k, v in (model_kwargs or {}).items() if k not in loops}
    mesh = device_mesh(1, "cpu")
    step, state, batch = build_train_step(
        name,
        batch_size=batch_size,
        image_size=image_size,
        dtype=dtype,
        mesh=mesh,
        model_kwargs=plain,
    )
    with jax.set_mesh(mesh):
        return xla_flops(step.lower(state, batch)) / batch_size / 1e9


def matmul_peak_gflops(dtype: Any, size: int, repeats: int = 5) -> float:
    """The best GFLOP/s of a (size x size) @ (size x size) matmul in `dtype` on one device."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    matmul = jax.jit(lambda x: x @ x).lower(a).compile()
    jax.block_until_ready(matmul(a))
    best = min(time_steps(lambda _, __: matmul(a), a, None, repeats, warmup=0)[0])
    return 2 * size**3 / best / 1e9


def significant(value: float, digits: int = 4) -> float:
    """`value` rounded to `digits` significant digits (tiny test models have tiny FLOP counts)."""
    return float(f"{value:.{digits}g}")


def summarize(
    compile_s: float,
    step_seconds: list[float],
    batch_size: int,
    compiled: Any,
    devices: int,
    peak_gflops: float,
    gflops_per_image: float,
) -> dict[str, Any]:
    """The benchmark fields of docs/design.md from the measurements, and the peak memory of
    `compiled`."""
    step_s = statistics.median(step_seconds)
    images_per_sec = batch_size / step_s
    return {
        "compile_s": round(compile_s, 3),
        "step_ms": round(step_s * 1e3, 3),
        "images_per_sec": round(images_per_sec, 3),
        "devices": devices,
        "device_kind": jax.devices()[0].device_kind,
        "train_gflops_per_image": significant(gflops_per_image),
        "peak_gflops": round(peak_gflops, 2),
        "mfu": significant(gflops_per_image * images_per_sec / peak_gflops),
        "peak_memory_mb": round(peak_memory_bytes(compiled) / 2**20, 1),
        "step_ms_min": round(min(step_seconds) * 1e3, 3),
        "step_ms_max": round(max(step_seconds) * 1e3, 3),
    }


def measured_peak_gflops(dtype: str, devices: int, size: int = 0) -> float:
    """`devices` times one device's matmul peak in `dtype` (size 0: 2048 on CPU, else 8192)."""
    size = size or (2048 if jax.default_backend() == "cpu" else 8192)
    return devices * matmul_peak_gflops(DTYPES[dtype], size)


def benchmark(
    name: str,
    *,
    batch_size: int,
    image_size: int | None = None,
    dtype: str = "float32",
    num_steps: int = 10,
    model_kwargs: dict | None = None,
    devices: int | None = None,
    peak_gflops: float | None = None,
) -> dict[str, Any]:
    """Compile and time the train step of `name`; the benchmark fields of docs/design.md."""
    image_size = image_size or archs.model_info(name).image_size
    mesh = device_mesh(devices)
    count = mesh.devices.size
    if batch_size % count:
        raise ValueError(f"batch_size={batch_size} is not divisible by devices={count}")
    step, state, batch = build_train_step(
        name,
        batch_size=batch_size,
        image_size=image_size,
        dtype=DTYPES[dtype],
        mesh=mesh,
        model_kwargs=model_kwargs,
    )
    with jax.set_mesh(mesh):
        compiled, compile_s = compile_step(step, state, batch)
        times, _ = time_steps(compiled, state, batch, num_steps)
    gflops = train_gflops_per_image(name, image_size, DTYPES[dtype], model_kwargs)
    if peak_gflops is None:
        peak_gflops = measured_peak_gflops(dtype, count)
    return {
        "model": name,
        "batch_size": batch_size,
        "image_size": image_size,
        "dtype": dtype,
        "steps": num_steps,
        "model_kwargs": model_kwargs or {},
        **summarize(compile_s, times, batch_size, compiled, count, peak_gflops, gflops),
    }


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options every train-step benchmark shares."""
    parser.add_argument("--image-size", type=int, default=0, help="0: the model's")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--compilation-cache", default="", help="persistent compilation cache dir")
    parser.add_argument("--peak-size", type=int, default=0, help="peak matmul size (0: default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def parse_model_kwargs(parser: argparse.ArgumentParser, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        parser.error(f"--model-kwargs {text!r} is not JSON: {e}")
    if not isinstance(value, dict):
        parser.error(f"--model-kwargs {text!r} must be a JSON object")
    return value


def print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        print("\n".join(f"{k:>24}: {v}" for k, v in result.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-kwargs", default="{}", help="JSON, e.g. '{\"remat\": true}'")
    parser.add_argument("--devices", type=int, default=0, help="0: all")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 1 warm-up)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    try:
        archs.model_info(args.model)
        result = benchmark(
            args.model,
            batch_size=args.batch_size,
            image_size=args.image_size or None,
            dtype=args.dtype,
            num_steps=args.steps,
            model_kwargs=parse_model_kwargs(parser, args.model_kwargs),
            devices=args.devices or None,
            peak_gflops=measured_peak_gflops(
                args.dtype, args.devices or jax.device_count(), args.peak_size
            ),
        )
    except ValueError as e:
        parser.error(str(e))
    print_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
