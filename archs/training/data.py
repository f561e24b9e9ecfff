"""Input pipelines over tfds: which examples each step sees, and how they are preprocessed.

Two pipelines, both exact for resume (the examples of step s are a pure function of (seed, s))
and both feeding uint8 images, normalised on device:
- `memory`, for datasets with fixed-size images (CIFAR, SVHN, ...): each split is decoded
  once into uint8 arrays; epoch e is a NumPy permutation seeded by (seed, e); augmentation runs
  on device in the train step (`steps.device_augment`). No reader state, so any step's batch is
  built directly. Measured on this 2-core CPU for CIFAR-10 it is far faster than the model.
- `stream`, for large or variable-size datasets (imagenet2012, imagenette, image folders):
  tf.data over `tfds` with per-epoch seeded file and buffer shuffles, deterministic maps and
  stateless random augmentation keyed by (epoch seed, position); resuming skips to the step's
  position in its epoch (reading, not decoding, the skipped records). grain over
  `tfds.data_source` would resume in O(1) but is not installed here, so it was not measured.
Each epoch uses its first `steps_per_epoch * batch_size` shuffled examples. Evaluation reads
every example once, in order, padded to whole global batches with `mask` = 0. Each process
reads its own rows of every global batch (`parallel.process_rows`, or `shard` for tf.data).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from archs.training import randaugment_tf
from archs.training.config import ConfigError, parse_randaugment
from archs.training.parallel import process_rows

HostBatch = dict[str, np.ndarray]

# AlexNet's PCA lighting: eigenvalues/vectors of ImageNet's RGB covariance (pixels in [0, 1]),
# as published with fb.resnet.torch's `Lighting` transform.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
_READ_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Sizes and options of the host-side transforms (from the config and `model_info`)."""

    image_size: int
    crop_pct: float
    augment: str
    crop_padding: int
    min_area: float
    scale_jitter: tuple[int, int]
    pca_lighting: float
    eval_protocol: str
    eval_scales: tuple[int, ...]
    randaugment: str = ""  # 'N,M' or '' (off)


@dataclasses.dataclass(frozen=True)
class Source:
    """A checked, prepared tfds dataset: the builder and what the run needs to know up front."""

    builder: tfds.core.DatasetBuilder
    train_split: str
    eval_split: str
    num_classes: int
    pipeline: str  # 'memory' or 'stream'

    @property
    def is_folder(self) -> bool:
        return isinstance(self.builder, tfds.ImageFolder)


def open_source(config: ml_collections.ConfigDict) -> Source:
    """Find and check the dataset without reading it; ConfigError says what is wrong."""
    name = config.dataset
    if name.startswith("folder:"):
        root = name.removeprefix("folder:")
        if not os.path.isdir(root):
            raise ConfigError(f"image folder {root!r} does not exist")
        builder = tfds.ImageFolder(root)
    else:
        try:
            builder = tfds.builder(name, data_dir=config.data_dir or None)
        except tfds.core.registered.DatasetNotFoundError:
            close = difflib.get_close_matches(name, tfds.list_builders(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown dataset {name!r}{hint} (a tfds name, or folder:PATH)"
            ) from None
        if not builder.is_prepared() and not config.download:
            raise ConfigError(
                f"dataset {name!r} is not prepared in {builder.data_dir!r}: set TFDS_DATA_DIR or "
                f"--config.data_dir to where it is, or --config.download=True; manual-download "
                f"datasets (imagenet2012) read their archives from <data_dir>/downloads/manual"
            )
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ConfigError(f"dataset {name!r} has no 'image' and 'label' features")
    splits = builder.info.splits
    # Split names are unknown before preparation (and under tfds.testing.mock_data).
    if isinstance(splits, dict) and splits:
        for split in (config.train_split, config.eval_split):
            if tfds.core.splits.Split(split.split("[")[0]) not in splits:
                raise ConfigError(
                    f"dataset {name!r} has no split {split!r}; it has {', '.join(splits)}"
                )
    fixed = None not in features["image"].shape and not isinstance(builder, tfds.ImageFolder)
    pipeline = config.data_pipeline
    if pipeline == "auto":
        pipeline = "memory" if fixed else "stream"
    if pipeline == "memory" and not fixed:
        raise ConfigError(f"data_pipeline='memory' needs fixed-size images; {name!r} has none")
    if pipeline == "memory" and config.augment not in ("cifar", "flip", "none"):
        raise ConfigError(
            f"augment={config.augment!r} runs in the tf.data pipeline: set data_pipeline='stream'"
        )
    if features["image"].shape[-1] != 3:
        raise ConfigError(f"dataset {name!r} has {features['image'].shape[-1]}-channel images")
    return Source(
        builder=builder,
        train_split=config.train_split,
        eval_split=config.eval_split,
        num_classes=features["label"].num_classes,
        pipeline=pipeline,
    )


def prepare(source: Source) -> None:
    """Download and prepare the dataset if it is not (only reached with config.download)."""
    if not source.is_folder and not source.builder.is_prepared():
        source.builder.download_and_prepare()


# ----- tf transforms: uint8 image in, uint8 image(s) out -------------------------------------


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _resize_short(image: tf.Tensor, size: tf.Tensor | int) -> tf.Tensor:
    """Short side to `size`, long side int(size * long / short), as torchvision's Resize(int)."""
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    size = tf.cast(size, tf.float32)
    short = tf.minimum(h, w)
    new_h = tf.where(h <= w, size, tf.floor(size * h / short))
    new_w = tf.where(w <= h, size, tf.floor(size * w / short))
    new = tf.cast(tf.stack([new_h, new_w]), tf.int32)
    return tf.image.resize(tf.cast(image, tf.float32), new, antialias=True)


def _crop(image: tf.Tensor, top: tf.Tensor, left: tf.Tensor, size: int) -> tf.Tensor:
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


def _center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.shape(image)
    top = tf.cast(tf.round(tf.cast(shape[0] - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(shape[1] - size, tf.float32) / 2.0), tf.int32)
    return _crop(image, top, left, size)


def eval_views(image: tf.Tensor, p: Preprocess) -> tf.Tensor:
    """The evaluation protocol: 'center' (H,W,3); 'ten_crop' and 'multi_scale' (V,H,W,3).

    'center': short side to floor(image_size / crop_pct), center crop (timm/torchvision eval).
    'flip': the same view; the eval step adds its mirror on device (`StepConfig.eval_flip`).
    'ten_crop': the same resize; 4 corners + center and their mirrors (AlexNet, ResNet).
    'multi_scale': short side to each of `eval_scales`, center crop and its mirror (VGG's
    multi-scale evaluation with crops instead of dense application).
    """
    size = p.image_size
    if p.eval_protocol == "multi_scale":
        views = []
        for scale in p.eval_scales:
            crop = _center_crop(_resize_short(image, scale), size)
            views += [crop, tf.image.flip_left_right(crop)]
        return _to_uint8(tf.stack(views))
    resized = _resize_short(image, math.floor(size / p.crop_pct))
    if p.eval_protocol in ("center", "flip"):
        return _to_uint8(_center_crop(resized, size))
    shape = tf.shape(resized)
    bottom, right = shape[0] - size, shape[1] - size
    corners = [_crop(resized, t, left, size) for t, left in ((0, 0), (0, right), (bottom, 0))]
    crops = [*corners, _crop(resized, bottom, right, size), _center_crop(resized, size)]
    return _to_uint8(tf.stack(crops + [tf.image.flip_left_right(c) for c in crops]))


def _random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return tf.image.stateless_random_flip_left_right(image, seed)


def _inception_crop(image: tf.Tensor, seed: tf.Tensor, p: Preprocess) -> tf.Tensor:
    """Random-resized crop (Szegedy et al.): area in [min_area, 1], aspect in [3/4, 4/3]."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(p.min_area, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    return tf.image.resize(tf.cast(crop, tf.float32), (p.image_size, p.image_size), antialias=True)


def _scale_jitter_crop(image: tf.Tensor, seed: tf.Tensor, p: Preprocess) -> tf.Tensor:
    """Short side uniform in `scale_jitter` (VGG, ResNet), then a random image_size crop."""
    lo, hi = p.scale_jitter
    short = tf.random.stateless_uniform([], seed, lo, hi + 1, dtype=tf.int32)
    resized = _resize_short(image, short)
    size = (p.image_size, p.image_size, 3)
    return tf.image.stateless_random_crop(resized, size, seed + 1)


def _pad_crop(image: tf.Tensor, seed: tf.Tensor, p: Preprocess) -> tf.Tensor:
    size = tf.shape(image)
    padded = tf.pad(image, [[p.crop_padding] * 2, [p.crop_padding] * 2, [0, 0]])
    return tf.image.stateless_random_crop(padded, size, seed)


def _pca_lighting(image: tf.Tensor, seed: tf.Tensor, std: float) -> tf.Tensor:
    """AlexNet's colour augmentation: add eigvec @ (alpha * eigval), alpha ~ N(0, std)."""
    alpha = tf.random.stateless_normal([3], seed, stddev=std)
    rgb = tf.linalg.matvec(tf.constant(PCA_EIGVEC), alpha * tf.constant(PCA_EIGVAL))
    return tf.cast(image, tf.float32) + 255.0 * rgb


def train_transform(image: tf.Tensor, seed: tf.Tensor, p: Preprocess) -> tf.Tensor:
    """One training example's host-side augmentation; `seed` is a stateless [2] seed."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    if p.augment == "inception":
        image = _inception_crop(image, seeds[0], p)
    elif p.augment == "scale_jitter":
        image = _scale_jitter_crop(image, seeds[0], p)
    elif p.augment == "cifar":
        image = _pad_crop(image, seeds[0], p)
    else:
        image = _center_crop(
            _resize_short(image, math.floor(p.image_size / p.crop_pct)), p.image_size
        )
    if p.augment != "none":
        image = _random_flip(image, seeds[1])
    if p.randaugment:
        num_ops, magnitude = parse_randaugment(p.randaugment)
        image = randaugment_tf.randaugment(_to_uint8(image), seeds[3], num_ops, magnitude)
    if p.pca_lighting > 0:
        image = _pca_lighting(image, seeds[2], p.pca_lighting)
    return _to_uint8(tf.cast(image, tf.float32))


# ----- pipelines -------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _read(source: Source, split: str, *, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """(image, label) pairs of a split; images encoded unless the builder cannot skip decoding."""
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
    kwargs = {"split": split, "shuffle_files": shuffle_seed is not None, "read_config": read_config}
    if not source.is_folder:
        kwargs["decoders"] = {"image": tfds.decode.SkipDecoding()}
    ds = source.builder.as_dataset(**kwargs)
    return ds.map(lambda ex: (ex["image"], ex["label"]))


def _decode(image: tf.Tensor) -> tf.Tensor:
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
    return image


def _count(ds: tf.data.Dataset) -> int:
    n = int(ds.cardinality())
    if n >= 0:
        return n
    # Unknown cardinality (e.g. tfds.testing.mock_data): count once.
    return int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def _to_numpy(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for x, y in tfds.as_numpy(ds.batch(_READ_BATCH)):
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


class TrainData:
    """Training batches: `batch_at(step)`-exact, as this process's rows of each global batch."""

    def __init__(
        self, source: Source, batch_size: int, seed: int, preprocess: Preprocess, buffer: int
    ):
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.preprocess = preprocess
        self.buffer = buffer
        self._arrays = None
        if source.pipeline == "memory":
            ds = _read(source, source.train_split).map(
                lambda x, y: (self._fixed_size(_decode(x)), y), num_parallel_calls=tf.data.AUTOTUNE
            )
            self._arrays = _to_numpy(ds)
            self.num_examples = len(self._arrays[1])
        else:
            self.num_examples = _count(_read(source, source.train_split))
        self.steps_per_epoch = self.num_examples // batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"batch_size={batch_size} is larger than the training set ({self.num_examples})"
            )
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _fixed_size(self, image: tf.Tensor) -> tf.Tensor:
        size = self.preprocess.image_size
        if image.shape[0] == size and image.shape[1] == size:
            return image
        return _to_uint8(tf.image.resize(tf.cast(image, tf.float32), (size, size), antialias=True))

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm_cache = (epoch, rng.permutation(self.num_examples))
        return self._perm_cache[1]

    def batch_at(self, step: int) -> HostBatch:
        """The memory pipeline's batch of optimizer step `step` (0-based)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        rows = self._permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        rows = rows[process_rows(self.batch_size)]
        images, labels = self._arrays
        return {"image": images[rows], "label": labels[rows]}

    def batches(self, start_step: int) -> Iterator[HostBatch]:
        """Batches of steps start_step, start_step + 1, ... forever."""
        if self._arrays is not None:
            step = start_step
            while True:
                yield self.batch_at(step)
                step += 1
        epoch, first = divmod(start_step, self.steps_per_epoch)
        while True:
            yield from tfds.as_numpy(self._stream_epoch(epoch, first * self.batch_size))
            epoch, first = epoch + 1, 0

    def _stream_epoch(self, epoch: int, skip: int) -> tf.data.Dataset:
        seed = _epoch_seed(self.seed, epoch)
        used = self.steps_per_epoch * self.batch_size
        ds = _read(self.source, self.source.train_split, shuffle_seed=seed)
        ds = ds.shuffle(self.buffer, seed=seed, reshuffle_each_iteration=False).take(used)
        ds = ds.enumerate().skip(skip).shard(jax.process_count(), jax.process_index())
        p = self.preprocess

        def transform(i: tf.Tensor, example: tuple[tf.Tensor, tf.Tensor]) -> dict:
            image, label = example
            stateless_seed = tf.stack([tf.constant(seed, tf.int64), i])
            return {"image": train_transform(_decode(image), stateless_seed, p), "label": label}

        ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        local = self.batch_size // jax.process_count()
        return ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


class EvalData:
    """Every example of the eval split once, padded to whole global batches with mask 0."""

    def __init__(self, source: Source, batch_size: int, preprocess: Preprocess):
        self.batch_size = batch_size
        ds = _read(source, source.eval_split).map(
            lambda x, y: (eval_views(_decode(x), preprocess), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        self._ds = ds
        self._arrays = _to_numpy(ds) if source.pipeline == "memory" else None
        self.num_examples = len(self._arrays[1]) if self._arrays else _count(ds)
        self.num_batches = -(-self.num_examples // batch_size)

    def batches(self) -> Iterator[HostBatch]:
        padded = self.num_batches * self.batch_size
        if self._arrays is not None:
            images, labels = self._arrays
            mask = np.arange(padded) < self.num_examples
            pad = padded - self.num_examples
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
            rows = process_rows(self.batch_size)
            for k in range(self.num_batches):
                batch = slice(k * self.batch_size, (k + 1) * self.batch_size)
                yield {
                    "image": images[batch][rows],
                    "label": labels[batch][rows],
                    "mask": mask[batch][rows],
                }
            return
        spec = self._ds.element_spec[0]
        filler = tf.data.Dataset.from_tensors(
            (tf.zeros(spec.shape, spec.dtype), tf.constant(0, tf.int64), False)
        ).repeat(padded - self.num_examples)
        ds = self._ds.map(lambda x, y: (x, y, True)).concatenate(filler)
        ds = ds.shard(jax.process_count(), jax.process_index())
        ds = ds.map(lambda x, y, m: {"image": x, "label": tf.cast(y, tf.int32), "mask": m})
        yield from tfds.as_numpy(ds.batch(self.batch_size // jax.process_count()))


def make_preprocess(config: ml_collections.ConfigDict, info) -> Preprocess:
    """Transforms for a model: sizes from `model_info` unless the config overrides them."""
    return Preprocess(
        image_size=config.image_size or info.image_size,
        crop_pct=info.crop_pct,
        augment=config.augment,
        crop_padding=config.crop_padding,
        min_area=config.min_area,
        scale_jitter=tuple(config.scale_jitter),
        pca_lighting=config.pca_lighting,
        eval_protocol=config.eval_protocol,
        eval_scales=tuple(config.eval_scales),
        randaugment=config.randaugment,
    )


def device_augment_kind(source: Source, preprocess: Preprocess) -> str:
    """The augmentation the train step applies on device ('none' when tf.data did it)."""
    return preprocess.augment if source.pipeline == "memory" else "none"


def device_randaugment(source: Source, preprocess: Preprocess) -> str:
    """The RandAugment the train step applies on device ('' when off or tf.data did it)."""
    return preprocess.randaugment if source.pipeline == "memory" else ""


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
    """Run `iterator` `size` items ahead in a background thread (host reads overlap steps).

    Closing the returned generator (or dropping it) stops and joins the thread, so no reader
    is left inside JAX or TensorFlow when the interpreter exits.
    """
    items: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not put(item):
                    return
        except Exception as error:  # handed to the consumer, raised there
            put(error)
        put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
