"""ImageNet (ILSVRC-2012) recipes, one per paper; all unverified (no run on real hardware yet).

    python train.py --config=configs/imagenet.py[:MODEL[,RECIPE]] --workdir=DIR

imagenet2012 needs tfds's manual download: put ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in <data_dir>/downloads/manual, then run once with
--config.download=True (or `tfds build imagenet2012`). No argument: resnet50 with `resnet`. A
model named without RECIPE gets its family's recipe (alexnet, vgg, resnet, resnext, senet,
densenet, googlenet; inception_resnet: `inception`; any other family: `resnet`). Each recipe
evaluates with its paper's protocol where we have it ('center': resize to image_size /
crop_pct, center crop; 'ten_crop'); the expected numbers below are the papers', for that
protocol. docs/recipes.md tabulates every hyperparameter with its source and our departures.
Time: not measured for any recipe here.

- `alexnet` (Krizhevsky et al. 2012, Sec. 4-5; ZFNet uses it too): batch 128, SGD momentum 0.9,
  lr 0.01 divided by 10 three times (ours: at 30/60/80 of 90 epochs; the paper divided on
  plateaus), weight decay 5e-4, random 224 crops of the image resized to 256 + flip, PCA
  lighting 0.1, 10-crop evaluation. alexnet_lrn: 59.3% top-1 (1 CNN, 40.7% error, Table 2).
- `vgg` (Simonyan & Zisserman 2015, Sec. 3.1): batch 256, momentum 0.9, lr 0.01 divided by 10
  three times in 74 epochs (ours: at 30/50/65; the paper: on plateaus), weight decay 5e-4, scale
  jitter S in [256, 512], random RGB colour shift (PCA lighting 0.1), dropout in the model.
  vgg16 (config D): 74.4% top-1 (25.6% error, Table 3, dense evaluation at Q = 384 with flips,
  Sec. 3.2, which we do not implement: ours is the center crop).
- `resnet` (He et al. 2016, Sec. 3.4): batch 256, momentum 0.9, lr 0.1 divided by 10 (ours: at
  30/60/90 epochs; the paper: on plateaus) over 120 epochs (the paper's 60e4 iterations),
  weight decay 1e-4, scale jitter [256, 480] + flip + PCA lighting, 10-crop evaluation.
  resnet50: 77.15% top-1 (22.85% error, 10-crop, Table 3), for the paper's v1 layout
  (`model_kwargs.stride_in='1x1'`; archs' default strides in the 3x3).
- `resnext` (Xie et al. 2017, Sec. 4): batch 256 (32 per GPU), momentum 0.9, lr 0.1 divided by
  10 three times with fb.resnet.torch's schedule (every 30 epochs; 100 epochs, the authors'
  code's default), weight decay 1e-4, random-resized crop + flip + PCA lighting
  (fb.resnet.torch's augmentation without its colour jitter). The authors' code uses Nesterov
  momentum (`nesterov=True` for it). resnext50_32x4d: 77.8% top-1 (22.2% error, 224 center
  crop, Table 3).
- `goyal` (Goyal et al. 2017, Sec. 2-5.2): lr 0.1 per 256 images scaled linearly (3.2 at batch
  8192), gradual warmup from 0.1 over 5 epochs, 90 epochs divided by 10 at 30/60/80, Nesterov
  momentum 0.9 (Sec. 5.1), weight decay 1e-4 except on BatchNorm's gamma and beta, BatchNorm
  statistics over 32 images whatever the device count (ghost BatchNorm), the last BatchNorm
  gamma of each residual block initialised to 0, the fc layer from N(0, 0.01), random-resized
  crop + flip, center-crop evaluation (ours: the paper names no crop). resnet50 at batch 8192:
  76.26% top-1 (23.74 +- 0.09% error, mean of 5 runs, Sec. 5.2, Table 1).
- `densenet` (Huang et al. 2017, Sec. 4.2): batch 256, 90 epochs, lr 0.1 divided by 10 at 30
  and 60, Nesterov momentum 0.9, weight decay 1e-4, fb.resnet.torch's augmentation (ours:
  random-resized crop + flip + PCA lighting, no colour jitter). densenet121: 74.98% top-1
  (25.02% error, single crop, Table 3).
- `senet` (Hu et al. 2018, Sec. 5.1 of the TPAMI version): batch 1024, lr 0.6, momentum 0.9,
  divided by 10 every 30 of 100 epochs, weight decay 1e-4 (ours: the paper gives none),
  random-resized crop + flip. seresnet50: 76.71% top-1 (23.29% error, Table 2).
- `googlenet` (Szegedy et al. 2015, Sec. 6): SGD momentum 0.9, lr decreased 4% every 8 epochs,
  random-resized crop (8-100% of the area, aspect 3/4-4/3) + flip. The paper gives no initial
  lr, batch, weight decay or length: ours are Caffe's bvlc_googlenet solver (lr 0.01 at batch
  32, here scaled linearly to batch 256; weight decay 2e-4, here on the biases too) and 100
  epochs (Caffe's: 250).
  googlenet / inception_v1: 89.93% top-5 (10.07% error, 1 model, 1 crop, Table 3).
- `inception` (Szegedy et al. 2017, "Inception-v4, Inception-ResNet and the Impact of Residual
  Connections on Learning", Sec. 4; for inception_resnet_v2): RMSProp with decay 0.9 and
  eps 1.0 (inside the square root, as TensorFlow's), lr 0.045 decayed by 0.94 every 2 epochs;
  ours: momentum 0.9 (tensorflow/models' inception training code), batch 256, 100 epochs,
  weight decay 4e-5 on kernels only (TF-slim's inception_resnet_v2 arg scope).
  inception_resnet_v2: 80.1% top-1 (19.9% error, single crop, Table 2, on the non-blacklisted
  subset of the validation set).
- `lars` (You et al. 2017, "Large Batch Training of Convolutional Networks", Algorithm 1 and
  Sec. 5, Table 4): batch 8192, base lr 30 (at 8K; not scaled linearly), LARS with trust
  coefficient 0.001, momentum 0.9, weight decay 5e-4, 5 warmup epochs, polynomial decay of
  power 2, 100 epochs, random-resized crop + flip, center crop; ours: no decay and no trust
  ratio on BatchNorm and biases. ResNet-50 v1 (`--config.model_kwargs.stride_in=1x1`) at 8K:
  75.2% top-1 (Table 4).
"""

import configs
from archs.training.config import base_config


def _steps(c, boundaries_epochs, epochs) -> None:
    c.num_epochs = epochs
    c.lr_boundaries = tuple(e / epochs for e in boundaries_epochs)


def alexnet(c, model: str) -> None:
    c.batch_size = 128
    c.learning_rate = 0.01
    c.weight_decay = 5e-4
    c.augment = "scale_jitter"
    c.scale_jitter = (256, 256)
    c.pca_lighting = 0.1
    c.eval_protocol = "ten_crop"
    _steps(c, (30, 60, 80), 90)


def vgg(c, model: str) -> None:
    c.batch_size = 256
    c.learning_rate = 0.01
    c.weight_decay = 5e-4
    c.augment = "scale_jitter"
    c.scale_jitter = (256, 512)
    c.pca_lighting = 0.1
    _steps(c, (30, 50, 65), 74)


def resnet(c, model: str) -> None:
    c.batch_size = 256
    c.weight_decay = 1e-4
    c.augment = "scale_jitter"
    c.scale_jitter = (256, 480)
    c.pca_lighting = 0.1
    c.eval_protocol = "ten_crop"
    _steps(c, (30, 60, 90), 120)


def resnext(c, model: str) -> None:
    c.batch_size = 256
    c.weight_decay = 1e-4
    c.augment = "inception"
    c.pca_lighting = 0.1
    _steps(c, (30, 60, 90), 100)


def goyal(c, model: str) -> None:
    c.batch_size = 8192
    c.lr_base_batch_size = 256
    c.warmup_epochs = 5
    c.warmup_start_factor = 1.0  # from eta = 0.1, the rate per 256 images
    c.nesterov = True
    c.weight_decay = 1e-4
    c.weight_decay_exclude_norm_bias = True
    c.bn_group_size = 32
    c.model_kwargs.zero_init_residual = True
    c.model_kwargs.fc_init_std = 0.01
    c.augment = "inception"
    _steps(c, (30, 60, 80), 90)


def densenet(c, model: str) -> None:
    c.batch_size = 256
    c.nesterov = True
    c.weight_decay = 1e-4
    c.augment = "inception"
    c.pca_lighting = 0.1
    _steps(c, (30, 60), 90)


def senet(c, model: str) -> None:
    c.batch_size = 1024
    c.learning_rate = 0.6
    c.weight_decay = 1e-4
    c.augment = "inception"
    _steps(c, (30, 60, 90), 100)


def googlenet(c, model: str) -> None:
    c.batch_size = 256
    c.learning_rate = 0.01
    c.lr_base_batch_size = 32
    c.schedule = "exponential"
    c.lr_decay_factor = 0.96
    c.lr_decay_epochs = 8
    c.weight_decay = 2e-4
    c.augment = "inception"
    c.num_epochs = 100


def inception(c, model: str) -> None:
    c.optimizer = "rmsprop"
    c.rmsprop_decay = 0.9
    c.rmsprop_eps = 1.0
    c.batch_size = 256
    c.learning_rate = 0.045
    c.schedule = "exponential"
    c.lr_decay_factor = 0.94
    c.lr_decay_epochs = 2
    c.weight_decay = 4e-5
    c.weight_decay_exclude_norm_bias = True
    c.augment = "inception"
    c.num_epochs = 100


def lars(c, model: str) -> None:
    c.optimizer = "lars"
    c.batch_size = 8192
    c.learning_rate = 30.0  # at 8K; the paper's base lr grows slower than the batch (Table 4)
    c.lr_base_batch_size = 0
    c.warmup_epochs = 5
    c.schedule = "polynomial"
    c.lr_decay_power = 2.0
    c.weight_decay = 5e-4
    c.weight_decay_exclude_norm_bias = True
    c.augment = "inception"
    c.num_epochs = 100


RECIPES = {
    "alexnet": alexnet,
    "vgg": vgg,
    "resnet": resnet,
    "resnext": resnext,
    "goyal": goyal,
    "densenet": densenet,
    "senet": senet,
    "googlenet": googlenet,
    "inception": inception,
    "lars": lars,
}
BY_FAMILY = {
    "alexnet": "alexnet",
    "vgg": "vgg",
    "resnet": "resnet",
    "resnext": "resnext",
    "senet": "senet",
    "densenet": "densenet",
    "googlenet": "googlenet",
    "inception_resnet": "inception",
}


def get_config(arg: str | None = None):
    """ARG is MODEL[,RECIPE]; no ARG: resnet50 with He et al.'s recipe."""
    model, recipe = configs.parse_arg(arg, "resnet50", RECIPES, BY_FAMILY, "resnet")
    c = base_config()
    c.model = model
    c.dataset = "imagenet2012"
    c.eval_split = "validation"
    c.data_pipeline = "stream"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.schedule = "step"
    c.eval_protocol = "center"
    recipe(c, model)
    return c
