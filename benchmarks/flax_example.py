"""Our train step beside the flax examples/imagenet one, timed alike and interleaved.

`python -m benchmarks.flax_example --flax-dir PATH --models resnet18 resnet50 --json`, where
PATH is a checkout of github.com/google/flax (its `examples/imagenet/`) or a directory holding
that example's `models.py` and `train.py`. Their code is imported from PATH at run time, never
copied here. Their step is built as their `train_and_evaluate` builds it: `create_model`,
`create_learning_rate_fn`, `create_train_state` (SGD, Nesterov momentum 0.9, L2 1e-4 in the
loss) and `train_step` under `jax.pmap(in_axes=(None, 0), out_axes=(None, 0),
axis_name='batch')` over the local devices, fed one synthetic float32 batch (their input
pipeline normalises on the host). Ours is `benchmarks.train_step`'s. Both are compiled first;
then `--rounds` rounds each time `--steps` steps of ours, then of theirs, so machine load falls
on both alike. Each side's result has train_step's fields (median over all its timed steps);
`ratio` is our images/s over theirs. The 1-minute load average before and after is reported.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import sys
import types
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from benchmarks import train_step as ours

FLAX_MODELS = {"resnet18": "ResNet18", "resnet34": "ResNet34", "resnet50": "ResNet50"}


def example_dir(flax_dir: str) -> str:
    """The directory holding the example's models.py and train.py, in either layout."""
    for candidate in (os.path.join(flax_dir, "examples", "imagenet"), flax_dir):
        if all(os.path.isfile(os.path.join(candidate, f)) for f in ("models.py", "train.py")):
            return candidate
    raise ValueError(
        f"--flax-dir {flax_dir!r} holds neither examples/imagenet/{{models,train}}.py nor "
        "models.py and train.py"
    )


def _load(name: str, path: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_example(flax_dir: str) -> tuple[types.ModuleType, types.ModuleType]:
    """(models, train) of the example. train.py imports `models` and `input_pipeline` by those
    names; the benchmark needs no input pipeline, so an empty one stands in where it is absent."""
    directory = example_dir(flax_dir)
    models = _load("models", os.path.join(directory, "models.py"))
    pipeline = os.path.join(directory, "input_pipeline.py")
    if os.path.isfile(pipeline):
        _load("input_pipeline", pipeline)
    else:
        sys.modules["input_pipeline"] = types.ModuleType("input_pipeline")
    # A private name: `train` would find the repository's own train.py.
    return models, _load("flax_imagenet_train", os.path.join(directory, "train.py"))


def build_flax_step(
    models: types.ModuleType, train: types.ModuleType, name: str, batch_size: int, image_size: int
) -> tuple[Any, Any, dict[str, jax.Array]]:
    """(pmapped step, state, batch) as the example's train_and_evaluate sets them up."""
    if name not in FLAX_MODELS:
        raise ValueError(f"model {name!r} is not one of {', '.join(FLAX_MODELS)}")
    config = ml_collections.ConfigDict(
        {"half_precision": False, "momentum": 0.9, "warmup_epochs": 5.0, "num_epochs": 100.0}
    )
    model = train.create_model(model_cls=getattr(models, FLAX_MODELS[name]), half_precision=False)
    learning_rate_fn = train.create_learning_rate_fn(config, 0.1 * batch_size / 256, 1000)
    state = train.create_train_state(jax.random.key(0), config, model, image_size, learning_rate_fn)
    step = jax.pmap(
        functools.partial(train.train_step, learning_rate_fn=learning_rate_fn),
        in_axes=(None, 0),
        out_axes=(None, 0),
        axis_name="batch",
    )
    devices = jax.local_device_count()
    host = ours.synthetic_batch(batch_size, image_size, 1000)
    batch = {
        "image": jnp.asarray(host["image"], jnp.float32).reshape(
            (devices, batch_size // devices, image_size, image_size, 3)
        )
        / 255.0,
        "label": jnp.asarray(host["label"]).reshape((devices, -1)),
    }
    return step, state, batch


def _time_rounds(sides: dict[str, list], rounds: int, steps: int) -> dict[str, list[float]]:
    """Alternate `steps` timed steps of each side for `rounds` rounds (one warm-up step each in
    the first); each side's times."""
    times = {side: [] for side in sides}
    for r in range(rounds):
        for side, entry in sides.items():
            step, state, batch = entry
            measured, entry[1] = ours.time_steps(step, state, batch, steps, warmup=int(r == 0))
            times[side].extend(measured)
    return times


def compare(
    models: types.ModuleType,
    train: types.ModuleType,
    name: str,
    *,
    batch_size: int,
    image_size: int,
    rounds: int,
    steps: int,
    peak_gflops: float,
    model_kwargs: dict | None = None,
) -> dict[str, Any]:
    """Ours (built with `model_kwargs`) and the flax example's train step of `name`, compiled
    then timed interleaved."""
    mesh = ours.device_mesh()
    step, state, batch = ours.build_train_step(
        name,
        batch_size=batch_size,
        image_size=image_size,
        dtype=jnp.float32,
        mesh=mesh,
        model_kwargs=model_kwargs,
    )
    with jax.set_mesh(mesh):
        our_exe, our_compile_s = ours.compile_step(step, state, batch)
    # Outside our mesh: pmap refuses a context mesh other than its own.
    flax_step, flax_state, flax_batch = build_flax_step(models, train, name, batch_size, image_size)
    flax_exe, flax_compile_s = ours.compile_step(flax_step, flax_state, flax_batch)
    times = _time_rounds(
        {
            "ours": [our_exe, state, batch],
            "flax": [lambda s, b: flax_exe(s, b)[0], flax_state, flax_batch],
        },
        rounds,
        steps,
    )
    devices = mesh.devices.size
    our_gflops = ours.train_gflops_per_image(name, image_size, jnp.float32, model_kwargs)
    flax_gflops = (
        ours.xla_flops(flax_step.lower(flax_state, flax_batch)) * devices / batch_size / 1e9
    )
    result = {
        "ours": ours.summarize(
            our_compile_s, times["ours"], batch_size, our_exe, devices, peak_gflops, our_gflops
        ),
        "flax": ours.summarize(
            flax_compile_s, times["flax"], batch_size, flax_exe, devices, peak_gflops, flax_gflops
        ),
    }
    result["ratio"] = round(result["ours"]["images_per_sec"] / result["flax"]["images_per_sec"], 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flax-dir", required=True, help="google/flax checkout or example dir")
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--rounds", type=int, default=2, help="ours, theirs, ours, theirs, ...")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
    parser.add_argument("--peak-size", type=int, default=0, help="peak matmul size (0: default)")
    parser.add_argument(
        "--model-kwargs", default="{}", help="JSON for ours, e.g. a form to compare"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    model_kwargs = ours.parse_model_kwargs(parser, args.model_kwargs)
    try:
        models, train = load_example(args.flax_dir)
        for name in args.models:
            if name not in FLAX_MODELS:
                raise ValueError(f"model {name!r} is not one of {', '.join(FLAX_MODELS)}")
    except ValueError as e:
        parser.error(str(e))
    load_before = os.getloadavg()[0]
    peak = ours.measured_peak_gflops("float32", jax.device_count(), args.peak_size)
    results = {
        name: compare(
            models,
            train,
            name,
            batch_size=args.batch_size,
            image_size=args.image_size,
            rounds=args.rounds,
            steps=args.steps,
            peak_gflops=peak,
            model_kwargs=model_kwargs,
        )
        for name in args.models
    }
    out = {
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "dtype": "float32",
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "model_kwargs": model_kwargs,
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "models": results,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for name, r in results.items():
            print(
                f"{name}: ours {r['ours']['images_per_sec']} img/s, flax example "
                f"{r['flax']['images_per_sec']} img/s, ratio {r['ratio']}"
            )
        print(f"load average {out['load_avg_1min_before']} -> {out['load_avg_1min_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
