"""CIFAR-10 recipes: a fast CPU recipe (the default), He et al., DenseNet-BC and ResNeXt-29.

    python train.py --config=configs/cifar10.py[:MODEL[,RECIPE]] --workdir=DIR

No argument: resnet20 with `fast`. A model named without RECIPE gets its family's paper recipe
(`cifar_resnext`: `resnext`, `densenet`: `densenet_bc`, any other: `he`). docs/recipes.md
tabulates each recipe against its paper, hyperparameter by hyperparameter.

- `fast` (ours, no paper): 5 epochs, batch 64, SGD Nesterov 0.9, peak lr 0.1 after one linear
  warmup epoch, cosine decay, label smoothing 0.1, weight decay 5e-4 on every parameter.
  Measured: `python train.py --config=configs/cifar10.py:resnet20,fast` on CIFAR-10 (a
  JPEG-recompressed copy), 2-core CPU VM, 2026-11-22: 80.34% test top-1 (top-5 98.83%) after
  3905 steps, 22 minutes (247 img/s).
- `he` (He et al. 2016, "Deep Residual Learning for Image Recognition", Sec. 4.2): batch 128,
  SGD momentum 0.9, lr 0.1 divided by 10 at 32k and 48k of 64k iterations, weight decay 1e-4,
  pad-4 crop + flip. resnet110 and resnet1202 (and plain110) start at lr 0.01 held for one
  epoch (~390 iterations; the paper: "until the training error is below 80% (about 400
  iterations)"), then 0.1. Expected test top-1 (Table 6): resnet20 91.25%, resnet32 92.49%,
  resnet44 92.83%, resnet56 93.03%, resnet110 93.39% (mean of 5 runs; best 93.57%),
  resnet1202 92.07%. Unverified. Time: not measured on an accelerator; on the 2-core CPU
  above, resnet20 would take about 9 hours (8.2M images at the measured 247 img/s).
- `densenet_bc` (Huang et al. 2017, "Densely Connected Convolutional Networks", Sec. 4.2):
  batch 64, 300 epochs, SGD Nesterov momentum 0.9, lr 0.1 divided by 10 at 50% and 75%,
  weight decay 1e-4, pad-4 crop + flip. Expected densenet_bc_100_12: 95.49% (C10+, 4.51%
  error, Table 2). Unverified.
- `resnext` (Xie et al. 2017, "Aggregated Residual Transformations", Appendix A, CIFAR): batch
  128, 300 epochs, SGD momentum 0.9, lr 0.1 divided by 10 at epochs 150 and 225, weight decay
  5e-4, pad-4 crop + flip. Expected resnext29_8x64d 96.35%, resnext29_16x64d 96.42% (Table 7,
  mean of 10 runs). Unverified.
Our CIFAR-10 copy is JPEG-recompressed: compare with the papers only to within a fraction of a
point.
"""

import configs
from archs.training.config import base_config


def he(c, model: str) -> None:
    c.batch_size = 128
    c.num_train_steps = 64_000
    c.learning_rate = 0.1
    c.lr_boundaries = (0.5, 0.75)
    c.weight_decay = 1e-4
    c.eval_every_steps = 2000
    if model in ("resnet110", "resnet1202", "plain110"):
        c.warmup_epochs = 1.0
        c.warmup_shape = "constant"
        c.warmup_start_factor = 0.1


def densenet_bc(c, model: str) -> None:
    c.batch_size = 64
    c.num_epochs = 300
    c.nesterov = True
    c.lr_boundaries = (0.5, 0.75)
    c.weight_decay = 1e-4


def resnext(c, model: str) -> None:
    c.batch_size = 128
    c.num_epochs = 300
    c.lr_boundaries = (150 / 300, 225 / 300)
    c.weight_decay = 5e-4


def fast(c, model: str) -> None:
    c.batch_size = 64
    c.num_epochs = 5
    c.nesterov = True
    c.learning_rate = 0.1
    c.schedule = "cosine"
    c.warmup_epochs = 1.0
    c.label_smoothing = 0.1
    c.weight_decay = 5e-4


RECIPES = {"fast": fast, "he": he, "densenet_bc": densenet_bc, "resnext": resnext}
BY_FAMILY = {"densenet": "densenet_bc", "cifar_resnext": "resnext"}


def get_config(arg: str | None = None):
    """ARG is MODEL[,RECIPE]; no ARG: resnet20 with the fast recipe."""
    model, recipe = configs.parse_arg(arg, "resnet20,fast", RECIPES, BY_FAMILY, "he")
    c = base_config()
    c.model = model
    c.dataset = "cifar10"
    c.eval_split = "test"
    c.augment = "cifar"
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.schedule = "step"
    c.log_every_steps = 100
    recipe(c, model)
    return c
