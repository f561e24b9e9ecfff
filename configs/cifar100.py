"""CIFAR-100 with the CIFAR-10 recipes (configs/cifar10.py): same ARG, MODEL[,RECIPE].

    python train.py --config=configs/cifar100.py:densenet_bc_100_12 --workdir=DIR

Expected test top-1 (papers; unverified here): densenet_bc_100_12 77.73% (C100+, Huang et al.
Table 2); resnext29_8x64d 82.23%, resnext29_16x64d 82.69% (Xie et al. Table 7). He et al. give
no CIFAR-100 figures.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "configs_cifar10", os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10.py")
)
_cifar10 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cifar10)


def get_config(arg: str | None = None):
    c = _cifar10.get_config(arg)
    c.dataset = "cifar100"
    return c
