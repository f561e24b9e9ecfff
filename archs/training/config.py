"""The training config: every key with its default, and the checks run before anything is built.

`base_config()` is what each recipe in `configs/` starts from, so every key of the training
contract (docs/design.md) exists everywhere and can be overridden from the command line.
`check_config` refuses bad values with a `ConfigError` (errors.py: a one-line error, exit 2)
without touching the workdir or compiling anything.
"""

from __future__ import annotations

import difflib
import importlib.util

import ml_collections

from archs.training.errors import ConfigError

DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("sgd", "adamw", "lars", "rmsprop")
SCHEDULES = ("step", "cosine", "exponential", "polynomial", "constant")
WARMUP_SHAPES = ("linear", "constant")
PARALLELISMS = ("jit", "pmap")
BN_MODES = ("sync", "per_device")
AUGMENTS = ("cifar", "flip", "inception", "scale_jitter", "none")
EVAL_PROTOCOLS = ("center", "ten_crop", "multi_scale", "flip")
PIPELINES = ("auto", "memory", "stream", "dali")
# Experiment trackers: writer name -> the module it needs (installed by the extra of that name).
WRITERS = {"tensorboard": None, "mlflow": "mlflow", "wandb": "wandb"}
RANDAUGMENT_MAX_MAGNITUDE = 10.0


def base_config() -> ml_collections.ConfigDict:
    """Defaults for every training key (the contract keys of docs/design.md first, then the
    system's own)."""
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
    c.bn_group_size = 0  # ghost BatchNorm: statistics over groups of this many images; 0 = off
    c.skip_nonfinite = False  # skip (and count) updates with a non-finite loss or gradient

    # Schedules and optimizers (optim.py).
    c.lr_base_batch_size = 0  # Goyal et al.'s linear scaling: lr * batch_size / this
    c.lr_boundaries = (0.5, 0.75)  # 'step': fractions of the run where lr *= lr_decay_factor
    c.lr_decay_factor = 0.1
    c.lr_decay_epochs = 0.0  # 'exponential': lr *= lr_decay_factor every this many epochs
    c.lr_decay_power = 2.0  # 'polynomial': lr = peak * (1 - t / T) ** this, to 0 at the end
    c.warmup_shape = "linear"  # 'linear' ramp to the peak, or 'constant' (hold, then the peak)
    c.warmup_start_factor = 0.0  # warmup starts at this * learning_rate (before batch scaling)
    c.weight_decay_exclude_norm_bias = False  # no decay on normalisation scales/shifts, biases
    c.lars_trust_coefficient = 0.001
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.rmsprop_decay = 0.9  # the mean square's decay
    c.rmsprop_eps = 1.0  # inside the square root, as TensorFlow's RMSProp

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
    c.eval_protocol = "center"  # 'flip' averages the logits of the image and its mirror
    c.eval_scales = (256, 288, 320)  # 'multi_scale': short sides, each center crop + flip
    c.eval_batch_size = 0  # 0: batch_size
    c.shuffle_buffer = 16384  # 'stream' pipeline
    c.image_size = 0  # 0: the model's model_info(...).image_size
    c.input_mean = ()  # per-channel, images in [0, 1]; (): the dataset's (normalization.py)
    c.input_std = ()
    c.num_classes = 0  # 0: the dataset's
    c.download = False  # let tfds download datasets that are not prepared

    # Training tricks (steps.py, mixing.py, ema.py, randaugment.py, optim.py); 0/'' = off.
    c.ema_decay = 0.0  # evaluate an exponential moving average of the weights too
    c.ema_warmup = False  # timm ModelEmaV3's decay warmup: min(ema_decay, 1 - (1 + t)^(-2/3))
    c.mixup_alpha = 0.0  # Beta(alpha, alpha) of Mixup's lambda
    c.cutmix_alpha = 0.0  # Beta(alpha, alpha) of CutMix's lambda
    c.mix_prob = 1.0  # probability that a batch is mixed (when an alpha is > 0)
    c.mix_switch_prob = 0.5  # with both alphas > 0: probability of CutMix rather than Mixup
    c.randaugment = ""  # "N,M": N ops per image at magnitude M in [0, 10]
    c.grad_clip_norm = 0.0  # clip the (averaged) gradient to this global norm
    c.writers = ("tensorboard",)  # also 'mlflow', 'wandb' (extras of the same names)

    # Speed (loop.py; benchmarks/ measures it).
    c.profile_steps = 0  # > 0: trace this many steps after the first to <workdir>/profile
    c.compilation_cache_dir = ""  # JAX's persistent compilation cache; '' leaves it off
    return c


def check_config(config: ml_collections.ConfigDict, devices: int = 1) -> None:
    """Raise ConfigError naming the first bad value (keys, ranges, choices).

    `devices` is the number of devices the batch is split over (`jax.device_count()`); the
    default 1 checks what holds whatever the count (a run checks again with its count).
    """
    known = list(base_config().keys())
    for key in sorted(set(config.keys()) - set(known)):
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown config key {key!r}{hint}")
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
        "bn_group_size",
        "warmup_start_factor",
        "lr_decay_power",
        "mixup_alpha",
        "cutmix_alpha",
        "grad_clip_norm",
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
    if not 0.0 <= config.rmsprop_decay < 1.0:
        raise ConfigError(f"rmsprop_decay must be in [0, 1), got {config.rmsprop_decay!r}")
    if not config.rmsprop_eps > 0:
        raise ConfigError(f"rmsprop_eps must be positive, got {config.rmsprop_eps!r}")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ConfigError(f"ema_decay must be in [0, 1) (0 = off), got {config.ema_decay!r}")
    for key in ("mix_prob", "mix_switch_prob"):
        if not 0.0 <= config[key] <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {config[key]!r}")
    parse_randaugment(config.randaugment)
    for name in config.writers:
        require_writer(name)
    choices = {
        "dtype": DTYPES,
        "optimizer": OPTIMIZERS,
        "schedule": SCHEDULES,
        "parallelism": PARALLELISMS,
        "bn_mode": BN_MODES,
        "augment": AUGMENTS,
        "eval_protocol": EVAL_PROTOCOLS,
        "data_pipeline": PIPELINES,
        "warmup_shape": WARMUP_SHAPES,
    }
    for key, allowed in choices.items():
        if config[key] not in allowed:
            raise ConfigError(
                f"{key}={config[key]!r} is not supported; allowed: {', '.join(allowed)}"
            )
    for key in ("input_mean", "input_std"):
        values = tuple(config[key])
        if values and (len(values) != 3 or not all(isinstance(v, int | float) for v in values)):
            raise ConfigError(f"{key} must be () or three numbers (R, G, B), got {values!r}")
    if any(v <= 0 for v in config.input_std):
        raise ConfigError(f"input_std must be positive, got {tuple(config.input_std)!r}")
    if bool(config.input_mean) != bool(config.input_std):
        raise ConfigError("set both input_mean and input_std, or neither (the dataset's)")
    if config.parallelism == "pmap" and config.bn_mode != "per_device":
        raise ConfigError(
            f"parallelism='pmap' computes BatchNorm statistics per device; set "
            f"bn_mode='per_device' (got bn_mode={config.bn_mode!r})"
        )
    holds_zero = config.warmup_shape == "constant" and not config.warmup_start_factor
    if holds_zero and config.warmup_epochs:
        raise ConfigError(
            "warmup_shape='constant' holds warmup_start_factor * learning_rate, which is 0; set "
            "warmup_start_factor > 0"
        )
    if not config.num_train_steps and config.warmup_epochs > config.num_epochs > 0:
        raise ConfigError(
            f"warmup_epochs={config.warmup_epochs!r} is longer than the run "
            f"(num_epochs={config.num_epochs!r})"
        )
    _check_bn_group_size(config, devices)


def _check_bn_group_size(config: ml_collections.ConfigDict, devices: int) -> None:
    """Ghost BatchNorm groups must tile each device's micro-batch."""
    per_device = config.batch_size // (devices * config.grad_accum_steps)
    if config.bn_group_size and per_device % config.bn_group_size:
        raise ConfigError(
            f"bn_group_size={config.bn_group_size} does not divide each device's micro-batch of "
            f"{per_device} images (batch_size={config.batch_size} over {devices} device(s) and "
            f"grad_accum_steps={config.grad_accum_steps}); use a divisor, or 0 for no groups"
        )


def parse_randaugment(spec: str) -> tuple[int, float] | None:
    """The config's `randaugment`: None for '', else (N, M) from "N,M" (ConfigError if bad)."""
    if spec == "":
        return None
    try:
        n, m = (part.strip() for part in str(spec).split(","))
        num_ops, magnitude = int(n), float(m)
    except ValueError:
        num_ops, magnitude = 0, -1.0
    if num_ops < 1 or not 0.0 <= magnitude <= RANDAUGMENT_MAX_MAGNITUDE:
        raise ConfigError(
            f"randaugment={spec!r} is not 'N,M' with N >= 1 ops per image and a magnitude M in "
            f"[0, {RANDAUGMENT_MAX_MAGNITUDE:g}] ('' = off)"
        )
    return num_ops, magnitude


def require_writer(name: str) -> None:
    """ConfigError unless `name` is a known writer whose package is installed."""
    if name not in WRITERS:
        raise ConfigError(f"writers: {name!r} is not supported; allowed: {', '.join(WRITERS)}")
    module = WRITERS[name]
    if module is not None and importlib.util.find_spec(module) is None:
        raise ConfigError(
            f'writers: {name!r} needs the {module!r} package: pip install -e ".[{name}]"'
        )
