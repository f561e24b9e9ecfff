"""Degradation: deeper plain nets train worse; residual nets of the same depth train better.

Claim: stacking more layers on a plain CIFAR-10 net raises its training and test error (plain-56
is worse than plain-20), while the same nets with identity shortcuts improve with depth.
Source: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Fig. 6 (left: plain,
middle: ResNet) and Table 6 (ResNet-20/32/44/56 test error 8.75/7.51/7.17/6.97 %).
Expected: final eval top-1 falls with depth for plain-20..56 and rises for resnet-20..56 (about
91.3 -> 93.0 %); plain-56 ends several points below plain-20. The smoke variant (200 steps)
checks that every net trains and reports; it is too short to show the effect.
Command: python sweep.py --sweep=configs/sweeps/degradation.py --workdir=runs/degradation
         --parallel=4 && python -m archs.training.report runs/degradation
Smoke:   python sweep.py --sweep=configs/sweeps/degradation.py:smoke --workdir=/tmp/degradation
"""

from archs.training.sweep import check_arg, product, smoke

DEPTHS = (20, 32, 44, 56)


def get_sweep(arg=None):
    check_arg(arg, ("smoke",))
    if arg == "smoke":
        runs = product(model=["plain20", "plain56", "resnet20", "resnet56"], seed=[0])
        return "configs/cifar10.py:resnet20", smoke(runs)
    models = [f"{kind}{depth}" for kind in ("plain", "resnet") for depth in DEPTHS]
    return "configs/cifar10.py:resnet20", product(model=models, seed=[0, 1, 2])
