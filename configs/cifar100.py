"""CIFAR-100 with the CIFAR-10 recipes (configs/cifar10.py): the same ARG, MODEL[,RECIPE].

    python train.py --config=configs/cifar100.py:densenet_bc_100_12 --workdir=DIR

No argument: resnet20 with `fast` (unmeasured on CIFAR-100). Expected test top-1 (papers;
unverified here): densenet_bc_100_12 77.73% (C100+, Huang et al. 2017, Table 2);
resnext29_8x64d 82.23%, resnext29_16x64d 82.69% (Xie et al. 2017, Table 7). He et al. give no
CIFAR-100 figures, so `he` on CIFAR-100 is ours. Inputs are normalised with CIFAR-100's own
channel mean and std (archs/training/normalization.py).
"""

from configs import cifar10


def get_config(arg: str | None = None):
    c = cifar10.get_config(arg)
    c.dataset = "cifar100"
    return c
