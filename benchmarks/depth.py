"""The train step's cost against depth: `python -m benchmarks.depth --json`.

For each model (default the CIFAR ResNets 20, 32, 44, 56 and 110; `--models resnet18,resnet50
--image-size 64` for ImageNet ones at a small size) it builds the training system's train step
(`benchmarks.train_step.build_train_step`, one synthetic batch) in each form: `unrolled`
(every block its own code, `block_barrier=False`), `barrier` (unrolled, each block's output
behind an optimization barrier: `block_barrier=True`) and `scanned` (`scan_stages=True`: a
stage's same blocks as one loop over parameters stacked at call time). It compiles each, then times
them side by side: `--steps` rounds after one warm-up step each, every round one step of each
form in turn, so a change in the machine's load reaches every form alike. A row per model and
form: `train_gflops_per_image` (XLA's count, unrolled: `train_step.train_gflops_per_image`),
`layers` (convolutions and dense layers on the main path, downsampling projections left out),
`compile_s`, `step_ms` (median), `images_per_sec`, `ms_per_layer` (step over layers),
`ms_per_gflop` (step over the batch's GFLOPs), `cost_vs_first` (this row's ms per GFLOP over
the first model's in the same form: 1 when cost grows as the work does) and `peak_memory_mb`.
`default` rows are the form that the model's default (`block_barrier='auto'`) is on this backend:
the same program, so they repeat that form's numbers instead of timing it again.

`--series-batches 32,64,128` adds a batch-size series of `--series-model` (default resnet56):
the same rows per batch size with `ms_per_image`, the cost per image against the batch.
`--model-kwargs '{"depths": [1, 2, 2]}'` passes overrides to every model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import jax
from flax import nnx

import archs
from archs.resnet import resolve_block_barrier
from archs.summary import abstract_model
from benchmarks import train_step

CIFAR_RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
FORMS = {
    "unrolled": {"block_barrier": False},
    "barrier": {"block_barrier": True},
    "scanned": {"block_barrier": False, "scan_stages": True},
}


def main_path_layers(name: str, model_kwargs: dict | None = None) -> int:
    """Convolutions and dense layers of `name` outside its shortcuts (resnet110: 110)."""
    model = abstract_model(name, **(model_kwargs or {}))
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return sum(1 for path, _ in params if path[-1] == "kernel" and "downsample" not in path)


def time_forms(
    name: str,
    *,
    batch_size: int,
    image_size: int,
    dtype: str,
    num_steps: int,
    model_kwargs: dict | None = None,
) -> list[dict[str, Any]]:
    """One row per form of `name`'s train step (module docstring), timed side by side."""
    mesh = train_step.device_mesh()
    compiled = {}
    for form, overrides in FORMS.items():
        step, state, batch = train_step.build_train_step(
            name,
            batch_size=batch_size,
            image_size=image_size,
            dtype=train_step.DTYPES[dtype],
            mesh=mesh,
            model_kwargs={**(model_kwargs or {}), **overrides},
        )
        with jax.set_mesh(mesh):
            executable, compile_s = train_step.compile_step(step, state, batch)
            _, state = train_step.time_steps(executable, state, batch, 0)
        compiled[form] = (executable, state, batch, compile_s)
    with jax.set_mesh(mesh):
        times = {form: [] for form in FORMS}
        for _ in range(num_steps):
            for form, (executable, state, batch, compile_s) in compiled.items():
                seconds, state = train_step.time_steps(executable, state, batch, 1, warmup=0)
                times[form] += seconds
                compiled[form] = (executable, state, batch, compile_s)
    gflops = train_step.train_gflops_per_image(
        name, image_size, train_step.DTYPES[dtype], model_kwargs
    )
    layers = main_path_layers(name, model_kwargs)
    rows = []
    for form, (executable, _, _, compile_s) in compiled.items():
        step_s = statistics.median(times[form])
        rows.append(
            {
                "model": name,
                "form": form,
                "batch_size": batch_size,
                "image_size": image_size,
                "train_gflops_per_image": train_step.significant(gflops),
                "layers": layers,
                "compile_s": round(compile_s, 2),
                "step_ms": round(step_s * 1e3, 2),
                "images_per_sec": round(batch_size / step_s, 2),
                "ms_per_layer": round(step_s * 1e3 / layers, 3),
                "ms_per_gflop": train_step.significant(step_s * 1e3 / (gflops * batch_size)),
                "peak_memory_mb": round(train_step.peak_memory_bytes(executable) / 2**20, 1),
            }
        )
    default = "barrier" if resolve_block_barrier("auto") else "unrolled"
    rows.append({**next(r for r in rows if r["form"] == default), "form": f"default ({default})"})
    return rows


def relative_costs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` with `cost_vs_first`: ms per GFLOP over the first row's of the same form."""
    first = {}
    out = []
    for row in rows:
        base = first.setdefault(row["form"], row["ms_per_gflop"])
        out.append({**row, "cost_vs_first": round(row["ms_per_gflop"] / base, 3)})
    return out


def depth_series(models: list[str], *, batch_size: int, **settings: Any) -> list[dict[str, Any]]:
    """The rows of every model in turn (`settings`: `time_forms`'), with `cost_vs_first`."""
    rows = []
    for name in models:
        rows += time_forms(name, batch_size=batch_size, **settings)
    return relative_costs(rows)


def batch_series(name: str, batch_sizes: list[int], **settings: Any) -> list[dict[str, Any]]:
    """The rows of `name` at each batch size (`settings`: `time_forms`'), with `ms_per_image`."""
    rows = []
    for batch_size in batch_sizes:
        rows += time_forms(name, batch_size=batch_size, **settings)
    return [{**row, "ms_per_image": round(1e3 / row["images_per_sec"], 3)} for row in rows]


def int_list(text: str) -> list[int]:
    """'32,64' -> [32, 64]; '' -> []."""
    return [int(part) for part in text.split(",") if part]


def print_table(rows: list[dict[str, Any]]) -> None:
    keys = [k for k in rows[0] if k not in ("image_size",)]
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CIFAR_RESNETS), help="comma-separated")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--dtype", choices=tuple(train_step.DTYPES), default="float32")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (after 1 warm-up)")
    parser.add_argument("--series-model", default="resnet56")
    parser.add_argument("--series-batches", type=int_list, default=[], help="e.g. 32,64,128")
    parser.add_argument("--model-kwargs", default="{}", help="JSON overrides for every model")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    for name in [*models, args.series_model]:
        if "block_barrier" not in archs.model_overrides(name):
            parser.error(f"{name!r} is not a ResNet (it has no block_barrier)")
    settings = {
        "image_size": args.image_size,
        "dtype": args.dtype,
        "num_steps": args.steps,
        "model_kwargs": train_step.parse_model_kwargs(parser, args.model_kwargs),
    }
    result = {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "depth": depth_series(models, batch_size=args.batch_size, **settings),
        "batch": batch_series(args.series_model, args.series_batches, **settings),
    }
    if args.json:
        train_step.print_result(result, True)
        return 0
    print(f"backend {result['backend']} ({result['device_kind']})")
    print_table(result["depth"])
    if result["batch"]:
        print_table(result["batch"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
