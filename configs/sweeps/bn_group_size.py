"""BatchNorm statistics per device against the global batch, and the linear scaling rule.

Claim: with the learning rate scaled linearly with the batch size (0.1 x B / 256) and a gradual
warmup of 5 epochs, ResNet-50 trained with batches up to 8k matches the batch-256 accuracy;
BatchNorm statistics computed over small per-device groups (32 images) rather than the whole
batch do not hurt and act as a regulariser.
Source: Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017,
Sec. 2.1-2.2 and 4.2 (Table 2 and Fig. 1: 23.60 % top-1 error at 256 vs 23.74 % at 8k with
warmup; per-worker BN over n = 32 images, Sec. 2.3).
Expected: batch_size 256/1024/4096 within about 0.3 % top-1 of each other with warmup_epochs=5;
bn_mode 'per_device' equal to or slightly above 'sync' (statistics over the whole batch).
Smoke: resnet20 on CIFAR-10, batch 32 and 128 with the scaled rate, both bn modes, 100 steps
(on one CPU device both modes agree).
Command: python sweep.py --sweep=configs/sweeps/bn_group_size.py --workdir=runs/bn
         --launcher=slurm --parallel=6 && python -m archs.training.report runs/bn
Smoke:   python sweep.py --sweep=configs/sweeps/bn_group_size.py:smoke --workdir=/tmp/bn
"""

from archs.training.sweep import check_arg, product, zip_

BASE_LR = 0.1  # per 256 images (Goyal et al., Sec. 2.1)


def scaled(batch_sizes, warmup_epochs):
    """Batch sizes with their linearly scaled learning rates and a warmup."""
    return zip_(
        batch_size=list(batch_sizes),
        learning_rate=[BASE_LR * b / 256 for b in batch_sizes],
        warmup_epochs=[warmup_epochs] * len(batch_sizes),
    )


def get_sweep(arg=None):
    check_arg(arg, ("smoke",))
    if arg == "smoke":
        short = {"num_train_steps": 100, "eval_every_steps": 100}
        runs = product(scaled([32, 128], 1), bn_mode=["sync", "per_device"])
        return "configs/cifar10.py:resnet20", product(runs, [short])
    runs = product(scaled([256, 1024, 4096], 5), bn_mode=["sync", "per_device"])
    return "configs/imagenet.py:resnet50", runs
