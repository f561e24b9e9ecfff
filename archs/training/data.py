"""Input pipelines over tfds: which examples each step sees, and how they are preprocessed.

Three pipelines, all exact for resume (the examples of step s are a pure function of (seed, s))
and all feeding uint8 images, normalised on device:
- `memory`, for datasets with fixed-size images (CIFAR, SVHN, ...): each split is decoded
  once into uint8 arrays; epoch e is a NumPy permutation seeded by (seed, e); augmentation runs
  on device in the train step (`steps.device_augment`). No reader state, so any step's batch is
  built directly. Measured on this 2-core CPU for CIFAR-10 it is far faster than the model.
- `stream`, for large or variable-size datasets (imagenet2012, imagenette, image folders):
  tf.data over `tfds` with per-epoch seeded file and buffer shuffles, deterministic maps and
  stateless random augmentation keyed by (epoch seed, position); resuming skips to the step's
  position in its epoch (reading, not decoding, the skipped records). grain over
  `tfds.data_source` would resume in O(1) but is not installed here, so it was not measured.
  Each example's augmentation is drawn first (`train_plan`), so JPEG Inception crops decode
  only their window.
- `dali`: the stream's reading and plans, with the decoding, resizing and cropping done by
  NVIDIA DALI, on the GPU when there is one (`archs.training.dali`).
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
from tensorflow_datasets.core.download import downloader

from archs.cli_errors import first_line
from archs.training import randaugment_tf
from archs.training.config import parse_randaugment
from archs.training.errors import ConfigError, RunError
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
DOWNLOAD_RETRIES = 2  # per URL, with tfds's backoff of 0.2 s doubling: about a second


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Sizes and options of the host-side transforms (from the config, `model_info` and the
    pipeline: `whole_frame` for fixed-size images read into memory, see `base_view`)."""

    image_size: int
    crop_pct: float
    whole_frame: bool
    augment: str
    crop_padding: int
    min_area: float
    scale_jitter: tuple[int, int]
    pca_lighting: float
    eval_protocol: str
    eval_scales: tuple[int, ...]
    roi_decode: bool = True  # decode only the crop window of JPEGs (`train_transform`)
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
    if pipeline == "dali":
        from archs.training import dali

        dali.check(config)
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
    """Download and prepare the dataset if it is not (config.download). A download that fails
    (no network) is a one-line RunError after a few seconds: tfds's own retries would take
    minutes."""
    if source.is_folder or source.builder.is_prepared():
        return
    retries = downloader.MAX_RETRIES
    downloader.MAX_RETRIES = DOWNLOAD_RETRIES
    try:
        source.builder.download_and_prepare()
    except Exception as error:  # requests, tfds and the dataset's own code raise many types
        name = source.builder.name
        raise RunError(
            f"could not download {name!r} (no network?): prepare it where the internet is "
            f"reachable (tfds build {name}) and point TFDS_DATA_DIR or --config.data_dir at it; "
            f"{first_line(error)}"
        ) from None
    finally:
        downloader.MAX_RETRIES = retries


# ----- tf transforms: uint8 image in, uint8 image(s) out -------------------------------------


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    if image.dtype == tf.uint8:
        return image
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _short_side_size(height_width: tf.Tensor, size: tf.Tensor | int) -> tf.Tensor:
    """(height, width) with the short side `size`, the long one int(size * long / short), as
    torchvision's Resize(int)."""
    h, w = tf.unstack(tf.cast(height_width, tf.float32))
    size = tf.cast(size, tf.float32)
    short = tf.minimum(h, w)
    new_h = tf.where(h <= w, size, tf.floor(size * h / short))
    new_w = tf.where(w <= h, size, tf.floor(size * w / short))
    return tf.cast(tf.stack([new_h, new_w]), tf.int32)


def _resize(image: tf.Tensor, height_width: tf.Tensor) -> tf.Tensor:
    return tf.image.resize(tf.cast(image, tf.float32), height_width, antialias=True)


def _resize_short(image: tf.Tensor, size: tf.Tensor | int) -> tf.Tensor:
    return _resize(image, _short_side_size(tf.shape(image)[:2], size))


def _crop(image: tf.Tensor, top: tf.Tensor, left: tf.Tensor, size: int) -> tf.Tensor:
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


def _center_offset(height_width: tf.Tensor, size: int) -> tf.Tensor:
    """(top, left) of the centered size x size crop."""
    margin = tf.cast(height_width - size, tf.float32)
    return tf.cast(tf.round(margin / 2.0), tf.int32)


def _center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    top, left = tf.unstack(_center_offset(tf.shape(image)[:2], size))
    return _crop(image, top, left, size)


def base_view(image: tf.Tensor, p: Preprocess) -> tf.Tensor:
    """The unaugmented view of a decoded image (uint8): what training pads, crops or flips, and
    what 'center' evaluation shows, so that evaluation sees what training saw (`eval_plan`)."""
    plan = eval_plan(tf.shape(image), p)
    top, left = tf.unstack(plan["crop"])
    return _to_uint8(_crop(_resize(image, plan["resize"]), top, left, p.image_size))


def eval_views(image: tf.Tensor, p: Preprocess) -> tf.Tensor:
    """The evaluation protocol: 'center' (H,W,3); 'ten_crop' and 'multi_scale' (V,H,W,3).

    'center': `base_view`, the view training starts from.
    'flip': the same view; the eval step adds its mirror on device (`StepConfig.eval_flip`).
    'ten_crop': short side to floor(image_size / crop_pct); 4 corners + center and their
    mirrors (AlexNet, ResNet).
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
    if p.eval_protocol in ("center", "flip"):
        return base_view(image, p)
    resized = _resize_short(image, math.floor(size / p.crop_pct))
    shape = tf.shape(resized)
    bottom, right = shape[0] - size, shape[1] - size
    corners = [_crop(resized, t, left, size) for t, left in ((0, 0), (0, right), (bottom, 0))]
    crops = [*corners, _crop(resized, bottom, right, size), _center_crop(resized, size)]
    return _to_uint8(tf.stack(crops + [tf.image.flip_left_right(c) for c in crops]))


def train_plan(shape: tf.Tensor, seed: tf.Tensor, p: Preprocess) -> dict[str, tf.Tensor]:
    """Where one training example's augmentation cuts, resizes, crops and flips, drawn from
    `seed` (a stateless [2] seed) and the image's (height, width, channels) alone, so that the
    window to decode is known before decoding: `train_transform` applies it in tf.data, and
    the DALI pipeline (`archs.training.dali`) to its own decoded images.

    `window` (top, left, height, width) is the part of the image the example uses; it is
    resized to `resize` (height, width), then the image_size square at `crop` (top, left) is
    kept, mirrored when `flip`, and `rgb` is added to it (`pca_lighting`, else zeros).
    - inception (Szegedy et al.): a window of area in [min_area, 1] and aspect in [3/4, 4/3],
      resized to image_size;
    - scale_jitter (VGG, ResNet): the whole image, short side uniform in `scale_jitter`, a
      random crop;
    - flip, none, cifar: the base view, also what 'center' evaluation shows: with
      `whole_frame` (fixed-size images in memory) the whole image resized to image_size; else
      the short side to floor(image_size / crop_pct) and the center crop (torchvision/timm's
      evaluation transform); cifar then pads and crops at random, which no window describes:
      `train_transform` does it.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    size = p.image_size
    height_width = tf.cast(shape[:2], tf.int32)
    window = tf.concat([tf.zeros([2], tf.int32), height_width], 0)
    if p.augment == "inception":
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seeds[0],
            min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(p.min_area, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        window = tf.concat([begin[:2], extent[:2]], 0)
        resize, crop = tf.constant([size, size]), tf.zeros([2], tf.int32)
    elif p.augment == "scale_jitter":
        lo, hi = p.scale_jitter
        short = tf.random.stateless_uniform([], seeds[0], lo, hi + 1, dtype=tf.int32)
        resize = _short_side_size(height_width, short)
        # tf.image.stateless_random_crop's offsets (its draw over (height, width, channels)).
        limit = tf.concat([resize - size + 1, [1]], 0)
        offset = tf.random.stateless_uniform([3], seeds[0] + 1, maxval=tf.int32.max, dtype=tf.int32)
        crop = (offset % limit)[:2]
    elif p.whole_frame:
        resize, crop = tf.constant([size, size]), tf.zeros([2], tf.int32)
    else:
        resize = _short_side_size(height_width, math.floor(size / p.crop_pct))
        crop = _center_offset(resize, size)
    flip = tf.constant(False)
    if p.augment != "none":  # tf.image.stateless_random_flip_left_right's draw
        flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
    rgb = tf.zeros([3])
    if p.pca_lighting > 0:  # AlexNet's colour noise: eigvec @ (alpha * eigval), alpha ~ N(0, std)
        alpha = tf.random.stateless_normal([3], seeds[2], stddev=p.pca_lighting)
        rgb = 255.0 * tf.linalg.matvec(tf.constant(PCA_EIGVEC), alpha * tf.constant(PCA_EIGVAL))
    return {"window": window, "resize": resize, "crop": crop, "flip": flip, "rgb": rgb}


def _pad_crop(image: tf.Tensor, seed: tf.Tensor, p: Preprocess) -> tf.Tensor:
    size = tf.shape(image)
    padded = tf.pad(image, [[p.crop_padding] * 2, [p.crop_padding] * 2, [0, 0]])
    return tf.image.stateless_random_crop(padded, size, seed)


def _flip_randaugment_light(
    image: tf.Tensor, plan: dict[str, tf.Tensor], p: Preprocess, randaugment_seed: tf.Tensor
) -> tf.Tensor:
    """The plan's flip, then RandAugment (`p.randaugment`), then the plan's colour noise."""
    if p.augment != "none":
        image = tf.cond(plan["flip"], lambda: tf.reverse(image, [1]), lambda: image)
    if p.randaugment:
        num_ops, magnitude = parse_randaugment(p.randaugment)
        image = randaugment_tf.randaugment(_to_uint8(image), randaugment_seed, num_ops, magnitude)
    image = tf.cast(image, tf.float32)
    if p.pca_lighting > 0:
        image += plan["rgb"]
    return _to_uint8(image)


def train_transform(image: tf.Tensor, seed: tf.Tensor, p: Preprocess) -> tf.Tensor:
    """One training example's host-side augmentation (`train_plan`); `seed` is a stateless [2]
    seed. `image` is decoded (uint8) or encoded (a string); encoded JPEGs with the inception
    crop decode only their window when `p.roi_decode`, as flax's ImageNet example and MLPerf's
    TensorFlow reference do: the same windows, and the same pixels except in the window's first
    and last columns, where libjpeg's chroma upsampling at the cut differs by a few levels.
    Other formats are then decoded whole (twice: once for their size)."""
    seeds = tf.random.experimental.stateless_split(seed, 4)  # as train_plan splits it
    if p.augment == "cifar":
        image = decode(image)
        plan = train_plan(tf.shape(image), seed, p)
        view = _pad_crop(base_view(image, p), seeds[0], p)
        return _flip_randaugment_light(view, plan, p, seeds[3])
    if image.dtype == tf.string and p.augment == "inception" and p.roi_decode:
        plan = train_plan(image_shape(image), seed, p)
        # Only the decoding branches: a tf.data map runs the rest faster outside a cond.
        window = tf.cond(
            tf.io.is_jpeg(image),
            lambda: tf.image.decode_and_crop_jpeg(image, plan["window"], channels=3),
            lambda: _window(decode(image), plan),
        )
    else:
        image = decode(image)
        plan = train_plan(tf.shape(image), seed, p)
        window = _window(image, plan)
    top, left = tf.unstack(plan["crop"])
    view = _crop(_resize(window, plan["resize"]), top, left, p.image_size)
    return _flip_randaugment_light(view, plan, p, seeds[3])


def _window(image: tf.Tensor, plan: dict[str, tf.Tensor]) -> tf.Tensor:
    top, left, height, width = tf.unstack(plan["window"])
    return tf.slice(image, [top, left, 0], [height, width, -1])


def image_shape(image: tf.Tensor) -> tf.Tensor:
    """(height, width, channels) of an encoded image: from the header for JPEG, else decoded."""
    return tf.cond(
        tf.io.is_jpeg(image),
        lambda: tf.image.extract_jpeg_shape(image),
        lambda: tf.shape(decode(image)),
    )


def eval_plan(shape: tf.Tensor, p: Preprocess) -> dict[str, tf.Tensor]:
    """The 'center' eval view (the base view) as a `train_plan`: the whole image, resized and
    center-cropped, no flip, no colour noise."""
    center = dataclasses.replace(p, augment="none", pca_lighting=0.0)
    return train_plan(shape, tf.zeros([2], tf.int64), center)


# ----- pipelines -------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def read_split(source: Source, split: str, *, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """(encoded image, label) pairs of a split. Image folders are read in tfds's fixed order:
    tfds.ImageFolder shuffles its files without a seed, which would break exact resume."""
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
    ds = source.builder.as_dataset(
        split=split,
        shuffle_files=shuffle_seed is not None and not source.is_folder,
        read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    return ds.map(lambda ex: (ex["image"], ex["label"]))


def decode(image: tf.Tensor) -> tf.Tensor:
    """An encoded image (string) decoded to uint8 HWC RGB; a decoded one as it is."""
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
    return image


def _count(ds: tf.data.Dataset) -> int:
    n = int(ds.cardinality())
    if n >= 0:
        return n
    # Unknown cardinality (e.g. tfds.testing.mock_data): count once.
    return int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def split_size(source: Source, split: str) -> int:
    """The number of examples of a split (slices such as 'train[:90%]' included), from the
    dataset's metadata, or counted when it has none (tfds.testing.mock_data)."""
    try:
        return source.builder.info.splits[split].num_examples
    except KeyError:
        return _count(read_split(source, split))


def _to_numpy(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for x, y in tfds.as_numpy(ds.batch(_READ_BATCH)):
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


class TrainData:
    """Training batches: `batch_at(step)`-exact, as this process's rows of each global batch.
    With the DALI pipeline and the train step's batch `sharding` (parallelism 'jit'), batches
    come as global arrays already on the devices (`archs.training.dali`)."""

    def __init__(
        self,
        source: Source,
        batch_size: int,
        seed: int,
        preprocess: Preprocess,
        buffer: int,
        sharding: jax.sharding.NamedSharding | None = None,
    ):
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.preprocess = preprocess
        self.buffer = buffer
        self._arrays = None
        if source.pipeline == "memory":
            ds = read_split(source, source.train_split).map(
                lambda x, y: (base_view(decode(x), preprocess), y),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
            self._arrays = _to_numpy(ds)
            self.num_examples = len(self._arrays[1])
        else:
            self.num_examples = split_size(source, source.train_split)
        self.steps_per_epoch = self.num_examples // batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"batch_size={batch_size} is larger than the training set ({self.num_examples})"
            )
        self._perm_cache: tuple[int, np.ndarray] | None = None
        self._decoder = _dali_decoder(source, preprocess, batch_size, sharding, training=True)

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
            batches = tfds.as_numpy(self._stream_epoch(epoch, first * self.batch_size))
            yield from batches if self._decoder is None else map(self._decoder, batches)
            epoch, first = epoch + 1, 0

    def _stream_epoch(self, epoch: int, skip: int) -> tf.data.Dataset:
        seed = _epoch_seed(self.seed, epoch)
        used = self.steps_per_epoch * self.batch_size
        ds = read_split(self.source, self.source.train_split, shuffle_seed=seed)
        ds = ds.shuffle(self.buffer, seed=seed, reshuffle_each_iteration=False).take(used)
        ds = ds.enumerate().skip(skip).shard(jax.process_count(), jax.process_index())
        p = self.preprocess

        def transform(i: tf.Tensor, example: tuple[tf.Tensor, tf.Tensor]) -> dict:
            image, label = example
            stateless_seed = tf.stack([tf.constant(seed, tf.int64), i])
            if self._decoder is None:
                return {"image": train_transform(image, stateless_seed, p), "label": label}
            plan = train_plan(image_shape(image), stateless_seed, p)  # DALI decodes
            return {"image": {"encoded": image, **plan}, "label": label}

        ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        local = self.batch_size // jax.process_count()
        return ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


class EvalData:
    """Every example of the eval split once, padded to whole global batches with mask 0
    (`sharding`: as `TrainData`'s)."""

    def __init__(
        self,
        source: Source,
        batch_size: int,
        preprocess: Preprocess,
        sharding: jax.sharding.NamedSharding | None = None,
    ):
        self.batch_size = batch_size
        self._decoder = _dali_decoder(source, preprocess, batch_size, sharding, training=False)

        def view(image: tf.Tensor) -> tf.Tensor | dict:
            if self._decoder is None:
                return eval_views(decode(image), preprocess)
            return {"encoded": image, **eval_plan(image_shape(image), preprocess)}  # DALI decodes

        ds = read_split(source, source.eval_split).map(
            lambda x, y: (view(x), y), num_parallel_calls=tf.data.AUTOTUNE
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
        filler = self._ds.take(1).map(lambda x, y: (x, y, False))  # masked: any example
        filler = filler.repeat(padded - self.num_examples)
        ds = self._ds.map(lambda x, y: (x, y, True)).concatenate(filler)
        ds = ds.shard(jax.process_count(), jax.process_index())
        ds = ds.map(lambda x, y, m: {"image": x, "label": tf.cast(y, tf.int32), "mask": m})
        batches = tfds.as_numpy(ds.batch(self.batch_size // jax.process_count()))
        yield from batches if self._decoder is None else map(self._decoder, batches)


def _dali_decoder(
    source: Source,
    preprocess: Preprocess,
    batch_size: int,
    sharding: jax.sharding.NamedSharding | None,
    training: bool,
) -> Any:
    """The DALI stage of a 'dali' source (None otherwise, and for the eval protocols other than
    'center', which tf.data makes)."""
    if source.pipeline != "dali" or not (training or preprocess.eval_protocol == "center"):
        return None
    from archs.training import dali  # the optional dependency, imported when chosen

    return dali.Decoder(preprocess, batch_size, sharding, training)


def make_preprocess(config: ml_collections.ConfigDict, info, source: Source) -> Preprocess:
    """Transforms for a model and a dataset: sizes from `model_info` unless the config
    overrides them."""
    return Preprocess(
        image_size=config.image_size or info.image_size,
        crop_pct=info.crop_pct,
        whole_frame=source.pipeline == "memory",
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
