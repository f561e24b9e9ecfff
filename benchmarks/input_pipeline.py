"""Host input-pipeline images/s per CPU core: `python -m benchmarks.input_pipeline --json`.

Does the data keep up with the model? Each pipeline is `archs.training.data.TrainData` as the
training loop builds it, timed over `--batches` batches after one warm-up batch, each batch put
on the devices as the loop does (`parallel.global_batch`) and waited for:
- `cifar`: the in-memory pipeline of `--cifar-dataset` (default cifar10, prepared in
  `--data-dir` or TFDS_DATA_DIR): decoded once (`setup_s`), then permuted gathers; its random
  crop and flip run on the device inside the train step, so they are not in this rate.
- `imagenet`: the tf.data stream pipeline with Inception crops (random-resized crop to 224,
  flip) decoding JPEGs: from `--imagenet-dataset` (a tfds name such as imagenet2012, or
  folder:PATH), else from a folder of synthetic ImageNet-sized JPEGs (500x375, two batches' worth
  and at least 64, written once to a temporary directory), which costs about the same to decode
  and crop per image.
`--cores K` pins the process to K cores first (os.sched_setaffinity), so `per_core` is the rate
over the cores actually used. `--train-step-model M` also times M's train step
(`benchmarks.train_step`, same batch size and cores) and reports the pipeline / step ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf

import archs
from archs.training import data, parallel
from archs.training.config import ConfigError, base_config
from benchmarks import train_step as bench

PIPELINES = ("cifar", "imagenet")


def synthetic_jpeg_folder(root: str, images: int = 64, classes: int = 4) -> str:
    """An image folder (root/train/class_k/*.jpg) of ImageNet-sized JPEGs; returns root."""
    rng = np.random.default_rng(0)
    for i in range(images):
        height, width = (375, 500) if i % 2 else (500, 375)
        coarse = rng.integers(0, 256, (height // 25, width // 25, 3)).astype(np.float32)
        image = tf.image.resize(coarse[None], (height, width))[0]
        noisy = image + rng.normal(0, 8, (height, width, 3))
        path = os.path.join(root, "train", f"class_{i % classes}")
        os.makedirs(path, exist_ok=True)
        jpeg = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(noisy, 0, 255), tf.uint8), quality=90)
        tf.io.write_file(os.path.join(path, f"{i}.jpg"), jpeg)
    return root


def pipeline_config(
    pipeline: str, dataset: str, data_dir: str, batch_size: int
) -> ml_collections.ConfigDict:
    """The training config of a pipeline: dataset, model and augmentation as a recipe sets them."""
    config = base_config()
    config.update(dataset=dataset, data_dir=data_dir, batch_size=batch_size, eval_split="train")
    if pipeline == "cifar":
        config.update(model="resnet20", augment="cifar")
    else:
        config.update(
            model="resnet50", augment="inception", data_pipeline="stream", shuffle_buffer=1024
        )
    return config


def measure(config: ml_collections.ConfigDict, batches: int) -> dict[str, Any]:
    """Setup seconds and images/s of the config's training batches, placed on the devices."""
    mesh = bench.device_mesh()
    start = time.perf_counter()
    source = data.open_source(config)
    train = data.TrainData(
        source,
        config.batch_size,
        config.seed,
        data.make_preprocess(config, archs.model_info(config.model), source),
        config.shuffle_buffer,
    )
    iterator = train.batches(0)
    jax.block_until_ready(parallel.global_batch(next(iterator), mesh))
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        jax.block_until_ready(parallel.global_batch(next(iterator), mesh))
    seconds = time.perf_counter() - start
    cores = len(os.sched_getaffinity(0))
    images_per_sec = batches * config.batch_size / seconds
    return {
        "dataset": config.dataset,
        "pipeline": source.pipeline,
        "augment": config.augment,
        "batch_size": config.batch_size,
        "batches": batches,
        "setup_s": round(setup_s, 3),
        "images_per_sec": round(images_per_sec, 1),
        "cores": cores,
        "per_core": round(images_per_sec / cores, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    parser.add_argument("--cifar-dataset", default="cifar10")
    parser.add_argument("--imagenet-dataset", default="", help="default: synthetic JPEG folder")
    parser.add_argument("--data-dir", default="", help="default: TFDS_DATA_DIR")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="timed batches")
    parser.add_argument("--cores", type=int, default=0, help="pin to this many cores (0: all)")
    parser.add_argument("--train-step-model", default="", help="also time this train step")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.cores:
        available = sorted(os.sched_getaffinity(0))
        if not 1 <= args.cores <= len(available):
            parser.error(f"--cores={args.cores} is not in 1..{len(available)}")
        os.sched_setaffinity(0, available[: args.cores])
    results: dict[str, Any] = {"device_kind": jax.devices()[0].device_kind}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for pipeline in args.pipelines:
                dataset = args.cifar_dataset
                if pipeline == "imagenet":
                    images = max(64, 2 * args.batch_size)
                    dataset = args.imagenet_dataset or "folder:" + synthetic_jpeg_folder(
                        tmp, images
                    )
                config = pipeline_config(pipeline, dataset, args.data_dir, args.batch_size)
                results[pipeline] = measure(config, args.batches)
        if args.train_step_model:
            step = bench.benchmark(
                args.train_step_model, batch_size=args.batch_size, num_steps=max(args.batches, 3)
            )
            results["train_step"] = {k: step[k] for k in ("model", "images_per_sec", "step_ms")}
            for pipeline in args.pipelines:
                ratio = results[pipeline]["images_per_sec"] / step["images_per_sec"]
                results[pipeline]["ratio_to_train_step"] = round(ratio, 2)
    except (ConfigError, ValueError) as e:
        parser.error(str(e))
    bench.print_result(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
