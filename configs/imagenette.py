"""Imagenette (10 easy ImageNet classes, fast.ai) for quick real-ImageNet runs; unverified.

    python train.py --config=configs/imagenette.py[:MODEL] --workdir=DIR --config.download=True

tfds downloads `imagenette/320px-v2` (~330 MB) where the internet is reachable. No paper: the
whole recipe is ours (docs/recipes.md): batch 64, SGD Nesterov momentum 0.9, lr 0.1 per 256
images with 2 warmup epochs and cosine decay over 40 epochs, label smoothing 0.1, weight decay
5e-4, random-resized crop (35-100% area) + flip, center-crop evaluation at the model's
image_size. No argument: resnet18. Expected: no reference figure (fast.ai's leaderboard,
github.com/fastai/imagenette, trains other nets with other recipes). Time: not measured.
"""

from archs.training.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model = arg or "resnet18"
    c.dataset = "imagenette/320px-v2"
    c.eval_split = "validation"
    c.data_pipeline = "stream"
    c.batch_size = 64
    c.learning_rate = 0.1
    c.lr_base_batch_size = 256
    c.nesterov = True
    c.schedule = "cosine"
    c.warmup_epochs = 2
    c.num_epochs = 40
    c.label_smoothing = 0.1
    c.weight_decay = 5e-4
    c.augment = "inception"
    c.min_area = 0.35
    c.shuffle_buffer = 4096
    c.log_every_steps = 50
    return c
