"""Cardinality: at equal parameters and compute, more groups of narrower paths are better.

Claim: in ResNet-50 held at about 25M parameters and 4.1 GMACs, raising the cardinality (the
number of groups of the 3x3 convs) while narrowing each group lowers the error.
Source: Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017,
Table 3 (ResNeXt-50 1x64d/2x40d/4x24d/8x14d/32x4d: 23.9/23.0/22.6/22.3/22.2 % top-1 error).
Expected: top-1 rises from 1x64d to 32x4d by about 1.7 %, params and GMACs nearly equal across
runs (the report's columns). Smoke: 1x64d and 32x4d at CIFAR-10 resolution for 200 steps.
Command: python sweep.py --sweep=configs/sweeps/cardinality.py --workdir=runs/cardinality
         --launcher=slurm --parallel=5 && python -m archs.training.report runs/cardinality
Smoke:   python sweep.py --sweep=configs/sweeps/cardinality.py:smoke --workdir=/tmp/cardinality
"""

from archs.training.sweep import check_arg, product, smoke, zip_

GROUPS_WIDTHS = ((1, 64), (2, 40), (4, 24), (8, 14), (32, 4))


def get_sweep(arg=None):
    check_arg(arg, ("smoke",))
    chosen = [GROUPS_WIDTHS[0], GROUPS_WIDTHS[-1]] if arg == "smoke" else GROUPS_WIDTHS
    shapes = zip_(
        **{
            "model_kwargs.groups": [g for g, _ in chosen],
            "model_kwargs.width_per_group": [w for _, w in chosen],
        }
    )
    runs = product([{"model": "resnet50"}], shapes)
    if arg == "smoke":
        return "configs/cifar10.py:resnet50", smoke(runs, steps=100)
    return "configs/imagenet.py:resnet50", runs
