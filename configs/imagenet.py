"""ImageNet (ILSVRC-2012) recipes, one per paper; all unverified here (no run on real hardware).

    python train.py --config=configs/imagenet.py[:MODEL[,RECIPE]] --workdir=DIR

imagenet2012 needs tfds's manual download: put ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in <data_dir>/downloads/manual, then run once with
--config.download=True (or `tfds build imagenet2012`). Evaluation: 'center' (resize to
image_size / crop_pct, center crop) unless `eval_protocol` says otherwise; each paper's number
below is for its own protocol (noted), so compare like with like.
No argument: resnet50 with `resnet`. RECIPE defaults by model family:
- `alexnet` (Krizhevsky et al. 2012; also ZFNet): batch 128, SGD momentum 0.9, lr 0.01 divided
  by 10 three times (here at 30/60/80 of 90 epochs; the paper divided on plateaus), weight decay
  5e-4, random 224 crops of 256 + flip, PCA lighting 0.1. alexnet_lrn: 59.3% top-1 (1 CNN,
  40.7% error, Table 2; 10-crop: --config.eval_protocol=ten_crop).
- `vgg` (Simonyan & Zisserman 2015): batch 256, momentum 0.9, lr 0.01 divided by 10 three
  times (74 epochs), weight decay 5e-4, scale jitter S in [256, 512], dropout in the model.
- `resnet` (He et al. 2016): batch 256, momentum 0.9, lr 0.1, 90 epochs divided by 10 at 30 and
  60, weight decay 1e-4, scale jitter [256, 480] + flip + PCA lighting. resnet50: 75.3% top-1
  (10-crop, Table 3: 24.7% error).
- `goyal` (Goyal et al. 2017): lr 0.1 per 256 images (linear scaling), 5 warmup epochs, 90
  epochs, /10 at 30/60/80, weight decay 1e-4 on all parameters (as the paper),
  random-resized crop. resnet50 at batch 8192: 76.26% (center crop, Table 4).
- `densenet` (Huang et al. 2017): batch 256, 90 epochs, lr 0.1 /10 at 30 and 60, Nesterov
  momentum 0.9, weight decay 1e-4.
- `senet` (Hu et al. 2018): batch 1024, lr 0.6, momentum 0.9, /10 every 30 of 100 epochs, weight
  decay 1e-4, random-resized crop + flip.
- `inception` (Szegedy et al. 2015 / 2017): SGD momentum 0.9, lr decayed 4% every 8 epochs (the
  GoogLeNet paper); Inception-ResNet-v2 used RMSProp (not provided here). Random-resized crop.
- `lars` (You et al. 2017): LARS with trust coefficient 0.001, 5 warmup epochs, lr 0.1 per 256
  images scaled linearly, cosine decay (the paper uses polynomial decay), weight decay 5e-4.
"""

from archs.training.config import base_config


def _steps(c, boundaries_epochs, epochs) -> None:
    c.num_epochs = epochs
    c.lr_boundaries = tuple(e / epochs for e in boundaries_epochs)


def _alexnet(c) -> None:
    c.batch_size = 128
    c.learning_rate = 0.01
    c.weight_decay = 5e-4
    c.augment = "scale_jitter"
    c.scale_jitter = (256, 256)
    c.pca_lighting = 0.1
    _steps(c, (30, 60, 80), 90)


def _vgg(c) -> None:
    c.batch_size = 256
    c.learning_rate = 0.01
    c.weight_decay = 5e-4
    c.augment = "scale_jitter"
    c.scale_jitter = (256, 512)
    _steps(c, (30, 50, 65), 74)


def _resnet(c) -> None:
    c.batch_size = 256
    c.weight_decay = 1e-4
    c.augment = "scale_jitter"
    c.scale_jitter = (256, 480)
    c.pca_lighting = 0.1
    _steps(c, (30, 60), 90)


def _goyal(c) -> None:
    c.batch_size = 8192
    c.lr_base_batch_size = 256
    c.warmup_epochs = 5
    c.weight_decay_exclude_norm_bias = False
    c.augment = "inception"
    _steps(c, (30, 60, 80), 90)


def _densenet(c) -> None:
    c.batch_size = 256
    c.nesterov = True
    c.augment = "inception"
    _steps(c, (30, 60), 90)


def _senet(c) -> None:
    c.batch_size = 1024
    c.learning_rate = 0.6
    c.augment = "inception"
    _steps(c, (30, 60, 90), 100)


def _inception(c) -> None:
    c.batch_size = 256
    c.learning_rate = 0.045
    c.schedule = "exponential"
    c.lr_decay_factor = 0.96
    c.lr_decay_epochs = 8
    c.weight_decay = 4e-5
    c.augment = "inception"
    c.num_epochs = 100


def _lars(c) -> None:
    c.optimizer = "lars"
    c.batch_size = 8192
    c.lr_base_batch_size = 256
    c.warmup_epochs = 5
    c.schedule = "cosine"
    c.weight_decay = 5e-4
    c.weight_decay_exclude_norm_bias = True
    c.augment = "inception"
    c.num_epochs = 90


RECIPES = {
    "alexnet": _alexnet,
    "vgg": _vgg,
    "resnet": _resnet,
    "goyal": _goyal,
    "densenet": _densenet,
    "senet": _senet,
    "inception": _inception,
    "lars": _lars,
}
_FAMILY_PREFIXES = (
    (("alexnet", "zfnet"), "alexnet"),
    (("vgg",), "vgg"),
    (("densenet",), "densenet"),
    (("se",), "senet"),
    (("googlenet", "inception"), "inception"),
)


def default_recipe(model: str) -> str:
    for prefixes, recipe in _FAMILY_PREFIXES:
        if model.startswith(prefixes):
            return recipe
    return "resnet"


def get_config(arg: str | None = None):
    """ARG is MODEL[,RECIPE]; no ARG: resnet50 with He et al.'s recipe."""
    model, _, recipe = (arg or "resnet50").partition(",")
    recipe = recipe or default_recipe(model)
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; allowed: {', '.join(RECIPES)}")
    c = base_config()
    c.model = model
    c.dataset = "imagenet2012"
    c.eval_split = "validation"
    c.data_pipeline = "stream"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.schedule = "step"
    c.eval_protocol = "center"
    RECIPES[recipe](c)
    return c
