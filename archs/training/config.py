"""The training config: every key with its default, and the checks run before anything is built.

`base_config()` is what each recipe in `configs/` starts from, so every key DESIGN's training
contract names exists everywhere and can be overridden from the command line. `check_config`
refuses bad values with a `ConfigError` (train.py turns it into a one-line error and exit 2)
without touching the workdir or compiling anything.
"""

from __future__ import annotations

import ml_collections

DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("sgd", "adamw", "lars")
SCHEDULES = ("step", "cosine", "exponential", "constant")
PARALLELISMS = ("jit", "pmap")
BN_MODES = ("sync", "per_device")
AUGMENTS = ("cifar", "flip", "inception", "scale_jitter", "none")
EVAL_PROTOCOLS = ("center", "ten_crop", "multi_scale")
PIPELINES = ("auto", "memory", "stream", "dali")


class ConfigError(ValueError):
    """Bad user input found before the run starts: a one-line message, exit status 2."""


class RunError(RuntimeError):
    """A run that cannot go on (non-finite loss, full disk, unreadable checkpoints): a one-line
    message naming what to do, exit status 1; every checkpoint already written is kept."""


def base_config() -> ml_collections.ConfigDict:
    """Defaults for every training key (DESIGN's contract keys first, then this system's own)."""
    c = ml_collections.ConfigDict()
    c.model = "resnet20"
    c.model_kwargs = ml_collections.ConfigDict()
    c.dataset = "cifar10"
    c.data_dir = ""  # '' uses TFDS_DATA_DIR or tfds's default (~/tensorflow_datasets)
    c.batch_size = 128  # global, over all devices and processes
    c.num_train_steps = 0  # used when > 0, else num_epochs
    c.num_epochs = 1.0
    c.learning_rate = 0.1  # peak; scaled by batch_size / lr_base_batch_size when that is > 0
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.nesterov = False
    c.schedule = "step"
    c.warmup_epochs = 0.0
    c.weight_decay = 1e-4
    c.label_smoothing = 0.0
    c.seed = 0
    c.dtype = "float32"
    c.parallelism = "jit"  # 'jit' (shardings over one mesh) or 'pmap' (per-device BatchNorm)
    c.bn_mode = "sync"  # jit: 'sync' (global batch statistics) or 'per_device' (shard_map)
    c.init_from = ""
    c.eval_only = False
    c.log_every_steps = 100
    c.eval_every_steps = 0  # 0: once per epoch; always at the end
    c.checkpoint_every_steps = 0  # 0: at each evaluation; always at the end
    c.keep_checkpoints = 3

    # Scale and faults (parallel.py, steps.py, loop.py).
    c.grad_accum_steps = 1  # micro-batches per optimizer step (BatchNorm statistics per micro)
    c.skip_nonfinite = False  # skip (and count) updates with a non-finite loss or gradient

    # Schedules and optimizers (optim.py).
    c.lr_base_batch_size = 0  # Goyal et al.'s linear scaling: lr * batch_size / this
    c.lr_boundaries = (0.5, 0.75)  # 'step': fractions of the run where lr *= lr_decay_factor
    c.lr_decay_factor = 0.1
    c.lr_decay_epochs = 0.0  # 'exponential': lr *= lr_decay_factor every this many epochs
    c.weight_decay_exclude_norm_bias = False
    c.lars_trust_coefficient = 0.001
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999

    # Data (data.py).
    c.train_split = "train"
    c.eval_split = "test"
    # 'memory' (decoded once), 'stream' (tf.data), 'dali' (tf.data reads, NVIDIA DALI decodes;
    # the [dali] extra), 'auto' chooses memory or stream
    c.data_pipeline = "auto"
    c.augment = "cifar"
    c.crop_padding = 4  # 'cifar' augmentation
    c.min_area = 0.08  # 'inception': random-resized-crop area range [min_area, 1]
    c.scale_jitter = (256, 480)  # 'scale_jitter': random short side in this range
    c.pca_lighting = 0.0  # AlexNet's PCA colour noise standard deviation (0.1 in the paper)
    c.eval_protocol = "center"
    c.eval_scales = (256, 288, 320)  # 'multi_scale': short sides, each center crop + flip
    c.eval_batch_size = 0  # 0: batch_size
    c.shuffle_buffer = 16384  # 'stream' pipeline
    c.image_size = 0  # 0: the model's model_info(...).image_size
    c.num_classes = 0  # 0: the dataset's
    c.download = False  # let tfds download datasets that are not prepared

    # Speed (loop.py; benchmarks/ measures it).
    c.profile_steps = 0  # > 0: trace this many steps after the first to <workdir>/profile
    c.compilation_cache_dir = ""  # JAX's persistent compilation cache; '' leaves it off
    return c


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first bad value (keys, ranges, choices)."""
    unknown = sorted(set(config.keys()) - set(base_config().keys()))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    positive = ("batch_size", "learning_rate", "keep_checkpoints", "grad_accum_steps")
    for key in positive:
        if not config[key] > 0:
            raise ConfigError(f"{key} must be positive, got {config[key]!r}")
    non_negative = (
        "num_train_steps",
        "num_epochs",
        "warmup_epochs",
        "weight_decay",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "eval_batch_size",
        "image_size",
        "num_classes",
        "pca_lighting",
        "lr_base_batch_size",
        "profile_steps",
    )
    for key in non_negative:
        if config[key] < 0:
            raise ConfigError(f"{key} must be >= 0, got {config[key]!r}")
    if not config.eval_only and config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise ConfigError("set num_train_steps or num_epochs to a positive value")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {config.label_smoothing!r}")
    if not 0.0 <= config.momentum < 1.0:
        raise ConfigError(f"momentum must be in [0, 1), got {config.momentum!r}")
    choices = {
        "dtype": DTYPES,
        "optimizer": OPTIMIZERS,
        "schedule": SCHEDULES,
        "parallelism": PARALLELISMS,
        "bn_mode": BN_MODES,
        "augment": AUGMENTS,
        "eval_protocol": EVAL_PROTOCOLS,
        "data_pipeline": PIPELINES,
    }
    for key, allowed in choices.items():
        if config[key] not in allowed:
            raise ConfigError(
                f"{key}={config[key]!r} is not supported; allowed: {', '.join(allowed)}"
            )
    if config.parallelism == "pmap" and config.bn_mode != "per_device":
        raise ConfigError(
            f"parallelism='pmap' computes BatchNorm statistics per device; set "
            f"bn_mode='per_device' (got bn_mode={config.bn_mode!r})"
        )
