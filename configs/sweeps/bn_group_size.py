"""BatchNorm statistics over groups of 32 images against the whole batch, and linear scaling.

Claim: with the learning rate scaled linearly with the batch size (0.1 x B / 256) and a gradual
warmup of 5 epochs, ResNet-50 trained with batches up to 8k matches the batch-256 accuracy;
BatchNorm statistics computed over a fixed small group per worker (n = 32 images) keep the
training objective the same at every batch size.
Source: Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017,
Sec. 2.1-2.3 and 5 (Fig. 1: error flat up to 8k; Table 1: 23.60 % top-1 error at 256 vs
23.74 % at 8k with gradual warmup; BatchNorm over n = 32 images per worker, Sec. 2.3 and 5.1,
and "not computed across all workers", Sec. 2.3).
Expected: with bn_group_size=32, batch_size 256/1024/8192 within about 0.3 % top-1 of each
other; with bn_group_size=0 (statistics over the whole batch) the larger batches no better,
likely worse. Every run uses the `goyal` recipe (lr 0.1 per 256 images, 5 warmup epochs);
`bn_group_size` makes the groups the same on any number of devices.
Smoke: resnet20 on CIFAR-10, batch 32 and 128 with the scaled rate, groups of 8 against the
whole batch, 100 steps.
Command: python sweep.py --sweep=configs/sweeps/bn_group_size.py --workdir=runs/bn
         --launcher=slurm --parallel=6 && python -m archs.training.report runs/bn
Smoke:   python sweep.py --sweep=configs/sweeps/bn_group_size.py:smoke --workdir=/tmp/bn
"""

from archs.training.sweep import check_arg, product, zip_

BASE_LR = 0.1  # per 256 images (Goyal et al., Sec. 5.1; the linear scaling rule: Sec. 2.1)


def get_sweep(arg=None):
    check_arg(arg, ("smoke",))
    if arg == "smoke":
        batch_sizes = [32, 128]
        scaled = zip_(
            batch_size=batch_sizes,
            learning_rate=[BASE_LR * b / 256 for b in batch_sizes],
        )
        short = {"num_train_steps": 100, "eval_every_steps": 100, "warmup_epochs": 0.05}
        runs = product(scaled, bn_group_size=[8, 0])
        return "configs/cifar10.py:resnet20,he", product(runs, [short])
    runs = product(batch_size=[256, 1024, 8192], bn_group_size=[32, 0])
    return "configs/imagenet.py:resnet50,goyal", runs
