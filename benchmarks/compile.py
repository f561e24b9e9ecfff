"""Time to first train step per model: `python -m benchmarks.compile --models resnet152 --json`.

For each model and each `--variants` entry (model overrides as JSON, e.g. '{}' and
'{"scan_blocks": true}'), in one process after a small warm-up compile: `build_s` (the model,
optimizer state and batch created and placed), `lower_s` (tracing and lowering the jitted step
of `benchmarks.train_step`), `compile_s` (XLA), `first_step_s` and their sum
`time_to_first_step_s`, with XLA's per-device `peak_memory_mb`. `--check-scan` adds, per
model, the largest absolute difference of the logits of the scan_blocks model from the
unscanned one built from the same seed (so holding the same parameters), in eval and in train
mode, next to the largest logit magnitude. `--compilation-cache DIR` turns on JAX's persistent
compilation cache (run twice to see a warm cache's time to first step).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import archs
from archs import fast_conv
from benchmarks import train_step as bench


def warm_up() -> None:
    """Compile and run a small convolution's gradient, so no row pays for JAX's and XLA's
    first-use costs."""
    x = jnp.ones((1, 8, 8, 3))

    def loss(w: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC).sum()

    jax.block_until_ready(jax.jit(jax.grad(loss))(jnp.ones((3, 3, 3, 4))))


NHWC = ("NHWC", "HWIO", "NHWC")


def time_to_first_step(
    name: str, *, batch_size: int, image_size: int, dtype: str, model_kwargs: dict
) -> dict[str, Any]:
    """One row: the phases from nothing to one finished train step."""
    mesh = bench.device_mesh()
    start = time.perf_counter()
    step, state, batch = bench.build_train_step(
        name,
        batch_size=batch_size,
        image_size=image_size,
        dtype=bench.DTYPES[dtype],
        mesh=mesh,
        model_kwargs=model_kwargs,
    )
    jax.block_until_ready(state)
    built = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = step.lower(state, batch)
        lowered_at = time.perf_counter()
        compiled = lowered.compile()
        compiled_at = time.perf_counter()
        jax.block_until_ready(compiled(state, batch))
        done = time.perf_counter()
    return {
        "model": name,
        "model_kwargs": model_kwargs,
        "batch_size": batch_size,
        "image_size": image_size,
        "dtype": dtype,
        "build_s": round(built - start, 3),
        "lower_s": round(lowered_at - built, 3),
        "compile_s": round(compiled_at - lowered_at, 3),
        "first_step_s": round(done - compiled_at, 3),
        "time_to_first_step_s": round(done - start, 3),
        "peak_memory_mb": round(bench.peak_memory_bytes(compiled) / 2**20, 1),
    }


def scan_pair(name: str, **overrides) -> tuple[nnx.Module, nnx.Module]:
    """`name` without and with scan_blocks, from the same seed (so the same parameters), with
    the convolutions the training system uses on this backend."""
    conv = fast_conv.for_backend(jax.default_backend())
    return tuple(
        archs.create_model(name, rngs=nnx.Rngs(0), conv=conv, scan_blocks=scan, **overrides)
        for scan in (False, True)
    )


def scan_output_difference(
    model: nnx.Module, scanned: nnx.Module, image_size: int, batch_size: int = 2
) -> dict[str, Any]:
    """Max |logits(scanned) - logits(model)| in eval and in train mode (which updates both
    models' BatchNorm statistics), next to the largest logit magnitude."""
    x = jnp.asarray(
        np.random.default_rng(0).standard_normal((batch_size, image_size, image_size, 3)),
        jnp.float32,
    )
    row = {"image_size": image_size, "batch_size": batch_size}
    for mode in ("eval", "train"):
        outputs = []
        for net in (model, scanned):
            getattr(net, mode)()
            outputs.append(nnx.jit(lambda m, x: m(x))(net, x))
        row[f"{mode}_max_abs_diff"] = float(jnp.max(jnp.abs(outputs[0] - outputs[1])))
        row[f"{mode}_max_abs_logit"] = float(jnp.max(jnp.abs(outputs[0])))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--variants", nargs="+", default=["{}"], help="model overrides, JSON")
    parser.add_argument("--check-scan", action="store_true", help="compare scan_blocks outputs")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch")
    bench.add_common_args(parser)
    args = parser.parse_args(argv)
    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    variants = [bench.parse_model_kwargs(parser, v) for v in args.variants]
    try:
        for name in args.models:
            archs.model_info(name)
        warm_up()
        rows = [
            time_to_first_step(
                name,
                batch_size=args.batch_size,
                image_size=args.image_size or archs.model_info(name).image_size,
                dtype=args.dtype,
                model_kwargs=kwargs,
            )
            for name in args.models
            for kwargs in variants
        ]
        checks = [
            {
                "model": name,
                **scan_output_difference(
                    *scan_pair(name), args.image_size or archs.model_info(name).image_size
                ),
            }
            for name in args.models
            if args.check_scan
        ]
    except ValueError as e:
        parser.error(str(e))
    out = {"device_kind": jax.devices()[0].device_kind, "rows": rows}
    if args.check_scan:
        out["scan_check"] = checks
    if args.json:
        print(json.dumps(out))
    else:
        for row in rows:
            print(
                f"{row['model']} {json.dumps(row['model_kwargs'])}: first step after "
                f"{row['time_to_first_step_s']} s (compile {row['compile_s']} s, lower "
                f"{row['lower_s']} s), {row['peak_memory_mb']} MB"
            )
        for check in checks:
            print(json.dumps(check))
    return 0


if __name__ == "__main__":
    sys.exit(main())
