"""Host input-pipeline images/s per CPU core: `python -m benchmarks.input_pipeline --json`.

Does the data keep up with the model? Each pipeline is the training system's own
(`archs.training.data.TrainData`, as the training loop builds it), timed over `--batches`
batches after one warm-up batch, each batch put on the devices as the loop does
(`parallel.global_batch`) and waited for. One row per pipeline, under `rows`:
- `memory`: CIFAR in memory (`--cifar-dataset`, default cifar10, prepared in `--data-dir` or
  TFDS_DATA_DIR): decoded once (`setup_s`), then permuted gathers; its random crop and flip run
  on the device inside the train step, so they are not in this rate.
- `stream`, `stream_roi`, `dali`: ImageNet-style training input, Inception crops (random-resized
  crop to 224, flip) of JPEGs from `--imagenet-dataset` (a tfds name such as imagenet2012, or
  folder:PATH), else from a folder of synthetic ImageNet-sized JPEGs (500x375, two batches' worth
  and at least 64, written once to a temporary directory), which cost about the same to decode
  and crop per image. `stream` is tf.data decoding whole images, `stream_roi` tf.data decoding
  only each crop window (`tf.image.decode_and_crop_jpeg`), `dali` NVIDIA DALI (the `[dali]`
  extra) decoding crop windows on the GPU when JAX's backend is one (`decode` says where), else
  on the CPU; it is left out, with a note, when DALI is not installed.
Each row has `images_per_sec` and `images_per_sec_per_core`. `--cores K` pins the process to K
cores first (os.sched_setaffinity), so per core is the rate over the cores actually used.
`images_per_cpu_second` divides by the CPU time the process used instead (all its threads):
on a machine loaded by other work, it is closer than the wall-clock rates to what each core
gives when the machine is free.
`--train-step-model M` also times M's train step on synthetic data (`benchmarks.train_step`,
same batch size and cores) and gives each row's `ratio_to_train_step`.

`--end-to-end M` trains M (default image size; `--model-kwargs`, `--dtype`) for `--batches`
steps fed by each ImageNet-style pipeline, as the training loop feeds it (a background thread
preparing batches while the device computes), and reports beside each row's end-to-end
images/s the step's images/s on one synthetic batch already on the devices (the "total" and
"compute" throughputs of NVIDIA's DeepLearningExamples) and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf

import archs
from archs.training import data, parallel
from archs.training.config import base_config
from archs.training.errors import ConfigError
from benchmarks import train_step as bench

PIPELINES = ("memory", "stream", "stream_roi", "dali")
IMAGENET_STYLE = PIPELINES[1:]


def synthetic_jpeg_folder(
    root: str,
    images: int = 64,
    classes: int = 4,
    split: str = "train",
    size: tuple[int, int] = (375, 500),
) -> str:
    """An image folder (root/split/class_k/*.jpg) of JPEGs, half of them `size` (height, width)
    and half transposed (ImageNet-sized by default); returns root."""
    rng = np.random.default_rng(0)
    for i in range(images):
        height, width = size if i % 2 else size[::-1]
        coarse = rng.integers(0, 256, (max(height // 25, 2), max(width // 25, 2), 3))
        image = tf.image.resize(coarse[None].astype(np.float32), (height, width))[0]
        noisy = image + rng.normal(0, 8, (height, width, 3))
        path = os.path.join(root, split, f"class_{i % classes}")
        os.makedirs(path, exist_ok=True)
        jpeg = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(noisy, 0, 255), tf.uint8), quality=90)
        tf.io.write_file(os.path.join(path, f"{i}.jpg"), jpeg)
    return root


def pipeline_config(
    pipeline: str, dataset: str, data_dir: str, batch_size: int, model: str = "resnet50"
) -> ml_collections.ConfigDict:
    """The training config of a pipeline: dataset, model and augmentation as a recipe sets them."""
    config = base_config()
    config.update(dataset=dataset, data_dir=data_dir, batch_size=batch_size, eval_split="train")
    if pipeline == "memory":
        config.update(model="resnet20", augment="cifar")
    else:
        data_pipeline = "dali" if pipeline == "dali" else "stream"
        config.update(
            model=model, augment="inception", data_pipeline=data_pipeline, shuffle_buffer=1024
        )
    return config


def open_pipeline(
    pipeline: str, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[data.Source, data.TrainData]:
    """The source and the training batches of a pipeline, built as the training loop does
    (`stream` decodes whole images, `stream_roi` and `dali` only the crop windows)."""
    source = data.open_source(config)
    preprocess = data.make_preprocess(config, archs.model_info(config.model), source)
    preprocess = dataclasses.replace(preprocess, roi_decode=pipeline != "stream")
    train = data.TrainData(
        source,
        config.batch_size,
        config.seed,
        preprocess,
        config.shuffle_buffer,
        parallel.batch_sharded(mesh),
    )
    return source, train


def measure(pipeline: str, config: ml_collections.ConfigDict, batches: int) -> dict[str, Any]:
    """Setup seconds and images/s of the pipeline's training batches, placed on the devices."""
    mesh = bench.device_mesh()
    start = time.perf_counter()
    source, train = open_pipeline(pipeline, config, mesh)
    iterator = train.batches(0)
    jax.block_until_ready(parallel.global_batch(next(iterator), mesh))
    setup_s = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        jax.block_until_ready(parallel.global_batch(next(iterator), mesh))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    images_per_sec = batches * config.batch_size / seconds
    return {
        "pipeline": pipeline,
        "data_pipeline": source.pipeline,
        "decode": decode_device(pipeline),
        "dataset": config.dataset,
        "augment": config.augment,
        "batch_size": config.batch_size,
        "batches": batches,
        "setup_s": round(setup_s, 3),
        **rates(images_per_sec),
        "images_per_cpu_second": round(batches * config.batch_size / cpu_seconds, 1),
    }


def decode_device(pipeline: str) -> str:
    """Where a pipeline decodes: DALI on a GPU backend's devices, the others on the CPU."""
    return "gpu" if pipeline == "dali" and jax.default_backend() == "gpu" else "cpu"


def rates(images_per_sec: float) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    return {
        "images_per_sec": round(images_per_sec, 1),
        "cores": cores,
        "images_per_sec_per_core": round(images_per_sec / cores, 1),
    }


def end_to_end(
    pipelines: list[str],
    dataset: str,
    args: argparse.Namespace,
    model_kwargs: dict,
) -> dict[str, Any]:
    """Images/s of `args.end_to_end`'s train step fed by each pipeline, and on synthetic data."""
    mesh = bench.device_mesh()
    model = args.end_to_end
    image_size = args.image_size or archs.model_info(model).image_size
    step, state, synthetic = bench.build_train_step(
        model,
        batch_size=args.batch_size,
        image_size=image_size,
        dtype=bench.DTYPES[args.dtype],
        mesh=mesh,
        model_kwargs=model_kwargs,
    )
    rows = []
    with jax.set_mesh(mesh):
        times, state = bench.time_steps(step, state, synthetic, args.batches)
        compute = args.batch_size / np.median(times)
        for pipeline in pipelines:
            config = pipeline_config(pipeline, dataset, args.data_dir, args.batch_size, model)
            config.image_size = image_size
            _, train = open_pipeline(pipeline, config, mesh)
            batches = data.prefetch(parallel.global_batch(b, mesh) for b in train.batches(0))
            with contextlib.closing(batches):
                times, state = bench.time_steps(fed(step, batches), state, None, args.batches)
            total = args.batch_size / np.median(times)
            rows.append(
                {
                    "pipeline": pipeline,
                    "decode": decode_device(pipeline),
                    "end_to_end_images_per_sec": round(total, 2),
                    "synthetic_images_per_sec": round(compute, 2),
                    "ratio": round(total / compute, 3),
                }
            )
    return {
        "model": model,
        "model_kwargs": model_kwargs,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "image_size": image_size,
        "steps": args.batches,
        "rows": rows,
    }


def fed(step: Any, batches: Iterator[dict]) -> Any:
    """`step` as `bench.time_steps` calls it, on the pipeline's next batch each time."""
    return lambda state, _: step(state, next(batches))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=None)
    parser.add_argument("--cifar-dataset", default="cifar10")
    parser.add_argument("--imagenet-dataset", default="", help="default: synthetic JPEG folder")
    parser.add_argument("--data-dir", default="", help="default: TFDS_DATA_DIR")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="timed batches (or steps)")
    parser.add_argument("--cores", type=int, default=0, help="pin to this many cores (0: all)")
    parser.add_argument("--train-step-model", default="", help="also time this train step")
    parser.add_argument("--end-to-end", default="", metavar="MODEL", help="train MODEL on them")
    parser.add_argument("--model-kwargs", default="{}", help="--end-to-end model overrides")
    parser.add_argument("--image-size", type=int, default=0, help="0: the model's")
    parser.add_argument("--dtype", choices=tuple(bench.DTYPES), default="bfloat16")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.cores:
        available = sorted(os.sched_getaffinity(0))
        if not 1 <= args.cores <= len(available):
            parser.error(f"--cores={args.cores} is not in 1..{len(available)}")
        os.sched_setaffinity(0, available[: args.cores])
    pipelines = args.pipelines or default_pipelines(args.end_to_end)
    if args.end_to_end and "memory" in pipelines:
        parser.error("--end-to-end trains on the ImageNet-style pipelines, not 'memory'")
    results: dict[str, Any] = {"device_kind": jax.devices()[0].device_kind, "rows": []}
    if args.pipelines is None and "dali" not in pipelines:
        results["note"] = f"dali left out: NVIDIA DALI is not installed ({dali_install()})"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            jpegs = args.imagenet_dataset
            if not jpegs and set(pipelines) & set(IMAGENET_STYLE):
                images = max(64, 2 * args.batch_size)
                jpegs = "folder:" + synthetic_jpeg_folder(tmp, images)
            if args.end_to_end:
                model_kwargs = bench.parse_model_kwargs(parser, args.model_kwargs)
                results["end_to_end"] = end_to_end(pipelines, jpegs, args, model_kwargs)
            else:
                for pipeline in pipelines:
                    dataset = args.cifar_dataset if pipeline == "memory" else jpegs
                    config = pipeline_config(pipeline, dataset, args.data_dir, args.batch_size)
                    config.image_size = args.image_size if pipeline != "memory" else 0
                    results["rows"].append(measure(pipeline, config, args.batches))
        if args.train_step_model:
            step = bench.benchmark(
                args.train_step_model, batch_size=args.batch_size, num_steps=max(args.batches, 3)
            )
            results["train_step"] = {k: step[k] for k in ("model", "images_per_sec", "step_ms")}
            for row in results["rows"]:
                ratio = row["images_per_sec"] / step["images_per_sec"]
                row["ratio_to_train_step"] = round(ratio, 2)
    except (ConfigError, ValueError) as e:
        parser.error(str(e))
    bench.print_result(results, args.json)
    return 0


def default_pipelines(end_to_end: str) -> list[str]:
    """Every pipeline there is (the ImageNet-style ones for --end-to-end); dali if installed."""
    from archs.training import dali

    chosen = IMAGENET_STYLE if end_to_end else PIPELINES
    return [p for p in chosen if p != "dali" or dali.nvdali is not None]


def dali_install() -> str:
    from archs.training import dali

    return dali.INSTALL


if __name__ == "__main__":
    sys.exit(main())
