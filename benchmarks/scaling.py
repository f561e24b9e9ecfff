"""Train-step throughput over 1, 2, 4, ... devices: `python -m benchmarks.scaling --model resnet50`.

Weak scaling, as data parallelism is used: every device keeps `--per-device-batch` examples,
so the global batch grows with the devices. For each count n (powers of two up to all
devices, and all of them) `benchmarks.train_step` measures the step on a mesh over the first n
devices; `scaling_efficiency` is images/s at n over n times images/s on one device.
`--host-devices N` splits a CPU host into N XLA devices (`jax_num_cpu_devices`), which exercises
the sharded step and its collectives without accelerators; they share the host's cores, so
their efficiency says nothing about accelerator scaling (and their `mfu`, against n times one
device's matmul peak, understates the host's use).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import jax

import archs
from benchmarks import train_step as bench


def device_counts(total: int) -> list[int]:
    """1, 2, 4, ... below `total`, then `total`."""
    counts, n = [], 1
    while n < total:
        counts.append(n)
        n *= 2
    return [*counts, total]


def scaling(
    name: str,
    *,
    per_device_batch: int,
    image_size: int | None,
    dtype: str,
    num_steps: int,
    model_kwargs: dict,
    peak_size: int = 0,
) -> dict[str, Any]:
    """One benchmark per device count, with the scaling efficiency against one device."""
    rows = []
    one_device_peak = bench.measured_peak_gflops(dtype, 1, peak_size)
    for n in device_counts(jax.device_count()):
        result = bench.benchmark(
            name,
            batch_size=per_device_batch * n,
            image_size=image_size,
            dtype=dtype,
            num_steps=num_steps,
            model_kwargs=model_kwargs,
            devices=n,
            peak_gflops=n * one_device_peak,
        )
        base = rows[0]["images_per_sec"] if rows else result["images_per_sec"]
        rows.append(
            {
                "devices": n,
                "batch_size": result["batch_size"],
                "step_ms": result["step_ms"],
                "images_per_sec": result["images_per_sec"],
                "scaling_efficiency": round(result["images_per_sec"] / (n * base), 4),
                "mfu": result["mfu"],
                "compile_s": result["compile_s"],
            }
        )
    return {
        "model": name,
        "per_device_batch": per_device_batch,
        "image_size": image_size or archs.model_info(name).image_size,
        "dtype": dtype,
        "model_kwargs": model_kwargs,
        "device_kind": jax.devices()[0].device_kind,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-kwargs", default="{}", help="model overrides, JSON")
    parser.add_argument("--per-device-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per device count")
    parser.add_argument("--host-devices", type=int, default=0, help="split the CPU into N devices")
    bench.add_common_args(parser)
    args = parser.parse_args(argv)
    if args.host_devices:
        # Takes effect only before JAX starts its backends, which nothing above has done.
        jax.config.update("jax_num_cpu_devices", args.host_devices)
    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    kwargs = bench.parse_model_kwargs(parser, args.model_kwargs)
    try:
        archs.model_info(args.model)
        result = scaling(
            args.model,
            per_device_batch=args.per_device_batch,
            image_size=args.image_size or None,
            dtype=args.dtype,
            num_steps=args.steps,
            model_kwargs=kwargs,
            peak_size=args.peak_size,
        )
    except ValueError as e:
        parser.error(str(e))
    bench.print_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
