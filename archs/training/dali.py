"""The DALI input pipeline (`data_pipeline='dali'`, the `[dali]` extra): tf.data reads and plans,
NVIDIA DALI decodes and transforms.

tf.data does what the `stream` pipeline does up to the pixels: it reads the encoded examples
(tfds TFRecord files or an image folder) in the same seeded order, each process its own rows of
every global batch, skipping to the step's position on resume; and for each example it draws the
augmentation (`data.train_plan`: crop window, resize, crop, flip, colour noise) from the stateless
seed of its position and the image's size, read from the JPEG header without decoding. DALI gets
the encoded bytes and the plan through `fn.external_source`, decodes (for inception crops only
the window, `fn.decoders.image_slice`), resizes, crops and flips. So no DALI reader, random
operator or checkpoint holds state: the batches of step s are a pure function of (seed, s), as
in the other pipelines, and both pipelines crop the same windows (the pixels differ only by the
JPEG decoders). DALI's own TFRecord reader was not taken: its shuffling and sharding differ
from tf.data's, exact resume would need each process's DALI checkpoint saved with the train
state, and it needs index files written beside the data.

`data.TrainData` and `data.EvalData` run this stage (`Decoder`) for 'dali' sources. Decoding runs
on the GPU (`device='mixed'`: nvJPEG, and the hardware JPEG decoder of GPUs that have one) when
JAX's backend is a GPU, else on the CPU. Given the train step's batch sharding (their
`sharding` argument, with parallelism 'jit'), one DALI pipeline per local device makes that
device's rows and the batch comes out as global jax.Arrays, taken from DALI's GPU buffers
without a copy (DLPack), which `parallel.global_batch` passes through; without it, one pipeline
makes this process's rows as host arrays, as the other pipelines do. Evaluation: the 'center'
view (`data.eval_plan`); the other protocols evaluate through tf.data.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from archs.training import data, parallel
from archs.training.errors import ConfigError

try:
    import nvidia.dali as nvdali
    from nvidia.dali import fn, types
except ImportError:
    nvdali = None

AUGMENTS = ("inception", "scale_jitter", "flip", "none")
INSTALL = 'pip install -e ".[dali]"'


def check(config: ml_collections.ConfigDict) -> None:
    """ConfigError unless DALI is installed and runs the configured augmentation."""
    if nvdali is None:
        raise ConfigError(
            f"data_pipeline='dali' needs NVIDIA DALI: {INSTALL} (CUDA 13 wheels; for CUDA 12 "
            "drivers install nvidia-dali-cuda120 instead)"
        )
    if config.augment not in AUGMENTS:
        raise ConfigError(
            f"data_pipeline='dali' runs augment {', '.join(AUGMENTS)}, not {config.augment!r}; "
            "use data_pipeline='stream' or 'memory' for it"
        )
    if config.randaugment:
        raise ConfigError(
            f"data_pipeline='dali' does not run randaugment={config.randaugment!r}; use "
            "data_pipeline='stream' or 'memory' for it"
        )


class Decoder:
    """DALI pipelines that turn planned batches (encoded images and their plans under
    `image`) into uint8 images: one over this process's rows, or one per local device of
    `sharding`."""

    def __init__(
        self,
        p: data.Preprocess,
        batch_size: int,
        sharding: jax.sharding.NamedSharding | None,
        training: bool,
    ):
        self.sharding = sharding
        self.global_shape = (batch_size, p.image_size, p.image_size, 3)
        on_gpu = jax.default_backend() == "gpu"
        if sharding is None:
            local = batch_size // jax.process_count()
            devices = [jax.local_devices()[0] if on_gpu else None]
            self.rows = [slice(0, local)]
        else:
            devices, self.rows = device_rows(sharding, batch_size)
        threads = max(1, len(os.sched_getaffinity(0)) // len(devices))
        self.devices = devices
        self.pipelines = [
            _pipeline(
                p,
                training,
                rows.stop - rows.start,
                device.local_hardware_id if on_gpu else None,
                threads,
            )
            for device, rows in zip(devices, self.rows, strict=True)
        ]

    def __call__(self, batch: dict) -> dict:
        planned = batch.pop("image")
        for (pipeline, inputs), rows in zip(self.pipelines, self.rows, strict=True):
            for name, dtype in inputs.items():
                if name == "encoded":
                    value = [np.frombuffer(x, np.uint8) for x in planned[name][rows]]
                else:
                    value = planned[name][rows].astype(dtype)
                pipeline.feed_input(name, value)
            pipeline.schedule_run()
        images = [pipeline.outputs()[0] for pipeline, _ in self.pipelines]
        if self.sharding is None:
            image = images[0]
            if isinstance(image, nvdali.tensors.TensorListGPU):
                image = image.as_cpu()
            return {"image": image.as_array(), **batch}
        return self._global(images, batch)

    def _global(self, images: list, batch: dict) -> dict[str, jax.Array]:
        """The batch as global arrays: each device's rows on it, images where DALI made them."""
        shards: dict[str, list[jax.Array]] = {key: [] for key in ("image", *batch)}
        for image, device, rows in zip(images, self.devices, self.rows, strict=True):
            if isinstance(image, nvdali.tensors.TensorListGPU):
                # Zero-copy: the dynamic executor hands each output over, never reusing it.
                shards["image"].append(jax.dlpack.from_dlpack(image.as_tensor()))
            else:
                shards["image"].append(jax.device_put(image.as_array(), device))
            for key, value in batch.items():
                shards[key].append(jax.device_put(value[rows], device))
        out = {}
        for key, parts in shards.items():
            shape = self.global_shape if key == "image" else (self.global_shape[0],)
            out[key] = jax.make_array_from_single_device_arrays(shape, self.sharding, parts)
        return out


def device_rows(
    sharding: jax.sharding.NamedSharding, batch_size: int
) -> tuple[list[jax.Device], list[slice]]:
    """This process's devices under `sharding` of a global batch, and the rows of this process's
    part of it (`parallel.process_rows`) that each holds."""
    first = parallel.process_rows(batch_size).start
    placed = []
    for device, index in sharding.addressable_devices_indices_map((batch_size,)).items():
        start, stop, _ = index[0].indices(batch_size)
        placed.append((start - first, device, slice(start - first, stop - first)))
    placed.sort(key=lambda item: item[0])
    return [device for _, device, _ in placed], [rows for _, _, rows in placed]


def _pipeline(
    p: data.Preprocess, training: bool, rows: int, device_id: int | None, threads: int
) -> tuple[nvdali.Pipeline, dict[str, type]]:
    """A DALI pipeline applying planned batches of `rows` examples (on GPU `device_id`, or on the
    CPU when None), and its inputs: plan keys with their NumPy types."""
    window = training and p.augment == "inception"
    flip = training and p.augment != "none"
    lighting = training and p.pca_lighting > 0
    inputs = {"encoded": np.uint8, "resize": np.float32}
    inputs |= {"window": np.int32} if window else {"crop": np.int32}
    inputs |= {"flip": np.int32} if flip else {}
    inputs |= {"rgb": np.float32} if lighting else {}
    pipeline = nvdali.Pipeline(
        batch_size=rows,
        num_threads=threads,
        device_id=device_id,
        exec_dynamic=True,
        prefetch_queue_depth=1,
    )
    with pipeline:
        nodes = {
            name: fn.external_source(
                name=name, dtype=types.to_dali_type(dtype), ndim=0 if name == "flip" else 1
            )
            for name, dtype in inputs.items()
        }
        decoder = "cpu" if device_id is None else "mixed"
        if window:
            images = fn.decoders.image_slice(
                nodes["encoded"],
                nodes["window"][0:2],
                nodes["window"][2:4],
                device=decoder,
                output_type=types.RGB,
                normalized_anchor=False,
                normalized_shape=False,
                axis_names="HW",
            )
        else:
            images = fn.decoders.image(nodes["encoded"], device=decoder, output_type=types.RGB)
        # Bilinear with antialiasing when downscaling, as tf.image.resize(antialias=True).
        images = fn.resize(
            images, size=nodes["resize"], antialias=True, interp_type=types.INTERP_LINEAR
        )
        if not window:  # a window is resized to the crop itself
            images = fn.slice(
                images,
                nodes["crop"],
                np.array([p.image_size, p.image_size], np.int32),
                normalized_anchor=False,
                normalized_shape=False,
                axis_names="HW",
            )
        if flip:
            images = fn.flip(images, horizontal=nodes["flip"])
        if lighting:
            rgb = nodes["rgb"] if device_id is None else nodes["rgb"].gpu()
            images = fn.cast(images + rgb, dtype=types.UINT8)
        pipeline.set_outputs(images)
    return pipeline, inputs
