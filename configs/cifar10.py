"""CIFAR-10 recipes: He et al. (default), DenseNet-BC, ResNeXt-29, and a fast CPU recipe.

    python train.py --config=configs/cifar10.py[:MODEL[,RECIPE]] --workdir=DIR

No argument: resnet20 with `he`. RECIPE defaults to the model's own paper.
- `he` (He et al. 2016, "Deep Residual Learning", Sec. 4.2): batch 128, SGD momentum 0.9, lr 0.1
  divided by 10 at 32k and 48k of 64k iterations, weight decay 1e-4 (coupled L2), pad-4 crop +
  flip. Expected test top-1 (paper, Table 6): resnet20 91.25%, resnet32 92.49%, resnet44
  92.83%, resnet56 93.03%, resnet110 93.39%, resnet1202 92.07%. Unverified here: nobody has
  run it on a GPU yet. resnet110/1202 warm up (the paper uses lr 0.01 for ~400 iterations;
  here one linear warmup epoch).
- `densenet_bc` (Huang et al. 2017, Sec. 4.2): batch 64, 300 epochs, SGD Nesterov momentum
  0.9, lr 0.1 divided by 10 at 50% and 75%, weight decay 1e-4. Expected densenet_bc_100_12:
  95.49% (C10+, Table 2). Unverified.
- `resnext` (Xie et al. 2017, Sec. 5.3): batch 128, 300 epochs, SGD momentum 0.9, lr 0.1
  divided by 10 at epochs 150 and 225, weight decay 5e-4. Expected resnext29_8x64d 96.35%,
  resnext29_16x64d 96.42% (Table 7). Unverified.
- `fast`: a CPU-sized run: 5 epochs, batch 64, SGD Nesterov 0.9, peak lr 0.1 with one warmup
  epoch then cosine decay, label smoothing 0.1, weight decay 5e-4. Measured (resnet20, real
  CIFAR-10 from a JPEG-recompressed copy, 2-core CPU VM, 2026-11-22): 80.34% test top-1 in
  22 minutes, 247 img/s (batch 128 and lr 0.2 had given 79.96% and 80.27% in two runs).
Its images are JPEG-recompressed: compare with the papers only to within a fraction of a point.
"""

from archs.training.config import base_config


def _he(c, model: str) -> None:
    c.batch_size = 128
    c.num_train_steps = 64_000
    c.learning_rate = 0.1
    c.lr_boundaries = (0.5, 0.75)
    c.weight_decay = 1e-4
    c.eval_every_steps = 2000
    if model in ("resnet110", "resnet1202", "plain110"):
        c.warmup_epochs = 1.0


def _densenet_bc(c, model: str) -> None:
    c.batch_size = 64
    c.num_epochs = 300
    c.nesterov = True
    c.lr_boundaries = (0.5, 0.75)
    c.weight_decay = 1e-4


def _resnext(c, model: str) -> None:
    c.batch_size = 128
    c.num_epochs = 300
    c.lr_boundaries = (0.5, 0.75)
    c.weight_decay = 5e-4


def _fast(c, model: str) -> None:
    c.batch_size = 64
    c.num_epochs = 5
    c.nesterov = True
    c.learning_rate = 0.1
    c.schedule = "cosine"
    c.warmup_epochs = 1.0
    c.label_smoothing = 0.1
    c.weight_decay = 5e-4


RECIPES = {"he": _he, "densenet_bc": _densenet_bc, "resnext": _resnext, "fast": _fast}


def default_recipe(model: str) -> str:
    if model.startswith("densenet_bc"):
        return "densenet_bc"
    if model.startswith("resnext29"):
        return "resnext"
    return "he"


def get_config(arg: str | None = None):
    """ARG is MODEL[,RECIPE]; no ARG: resnet20 with He et al.'s recipe."""
    model, _, recipe = (arg or "resnet20").partition(",")
    recipe = recipe or default_recipe(model)
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; allowed: {', '.join(RECIPES)}")
    c = base_config()
    c.model = model
    c.dataset = "cifar10"
    c.eval_split = "test"
    c.augment = "cifar"
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.schedule = "step"
    c.log_every_steps = 100
    RECIPES[recipe](c, model)
    return c
