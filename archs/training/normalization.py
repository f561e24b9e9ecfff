"""The per-channel mean and std that normalise a dataset's images: a property of the dataset.

Images in [0, 1] become (x - mean) / std on device. The constants are the dataset's, whatever
the model: a CIFAR-100 run uses CIFAR-100's. Known datasets have them below (per-channel mean
and population std of every training pixel in [0, 1]); for any other dataset they are computed
from its training split when a run first starts, and a resumed run reads them back from the
workdir's config.json (`input_mean`, `input_std`), so it normalises as it began. A config may
also set `input_mean`/`input_std` itself (a fine-tune that keeps its pretrained model's).
A model's own `model_info(...).mean/std` describe its pretrained weights' preprocessing.
"""

from __future__ import annotations

import numpy as np

from archs.training import data

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# name (without version or config) -> ((mean R, G, B), (std R, G, B)), source
KNOWN_STATS: dict[str, tuple[tuple[tuple[float, ...], tuple[float, ...]], str]] = {
    # Recomputed from tfds's training split of this copy as 0.4913 0.4821 0.4465 / 0.2452
    # 0.2428 0.2606 (a JPEG-recompressed copy, so a slightly smaller std).
    "cifar10": (((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), "CIFAR-10 train split"),
    "cifar100": (((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)), "CIFAR-100 train split"),
    "svhn_cropped": (((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)), "SVHN train split"),
    # torchvision's ImageNet constants; the subsets and test sets of ImageNet share them.
    "imagenet2012": (IMAGENET, "ImageNet train split (torchvision)"),
    "imagenet2012_subset": (IMAGENET, "ImageNet train split (torchvision)"),
    "imagenet_v2": (IMAGENET, "ImageNet train split (torchvision)"),
    "imagenette": (IMAGENET, "ImageNet train split (torchvision)"),
}
MAX_COUNTED = 10_000  # examples read to compute the constants of a dataset not listed above


def known_stats(dataset: str) -> tuple[tuple[tuple[float, ...], tuple[float, ...]], str] | None:
    """((mean, std), source) of a tfds dataset name such as 'cifar10' or
    'imagenette/320px-v2:1.0.0'; None when it has no known constants."""
    return KNOWN_STATS.get(dataset.split("/")[0].split(":")[0])


def computed_stats(
    source: data.Source, preprocess: data.Preprocess
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the first MAX_COUNTED training images as training sees them unaugmented
    (`data.base_view`), per channel, in [0, 1]."""
    total = np.zeros(3)
    squares = np.zeros(3)
    pixels = 0
    ds = data.read_split(source, source.train_split).take(MAX_COUNTED)
    ds = ds.map(lambda image, _: data.base_view(data.decode(image), preprocess))
    for image in ds.batch(256).as_numpy_iterator():
        x = image.astype(np.float64) / 255.0
        total += x.sum(axis=(0, 1, 2))
        squares += (x**2).sum(axis=(0, 1, 2))
        pixels += x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 0.0))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)
