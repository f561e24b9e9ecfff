"""Parameter efficiency: DenseNet-BC matches deeper ResNets with a fraction of their parameters.

Claim: on CIFAR-10, DenseNet-BC (L=100, k=12) with 0.8M parameters reaches a lower error than
ResNet-110 with 1.7M.
Source: Huang et al., "Densely Connected Convolutional Networks", CVPR 2017, Table 2 (C10+:
DenseNet-BC-100-12 4.51 %, ResNet-110 6.41 % error, the row of ResNet-110 "reported by" the
stochastic-depth paper; He et al.'s own row: 6.61 %) and Fig. 4 (error against parameters).
Expected: densenet_bc_100_12 above resnet110 and resnet56 in top-1 at half their parameters or
less (the report's accuracy-against-params plot). Every run here uses the DenseNet recipe of
the base config, so the difference is the architecture's. Smoke: densenet_bc_100_12 and resnet56
for 100 steps.
Command: python sweep.py --sweep=configs/sweeps/densenet_vs_resnet.py --workdir=runs/dvr
         --parallel=3 && python -m archs.training.report runs/dvr
Smoke:   python sweep.py --sweep=configs/sweeps/densenet_vs_resnet.py:smoke --workdir=/tmp/dvr
"""

from archs.training.sweep import check_arg, product, smoke


def get_sweep(arg=None):
    check_arg(arg, ("smoke",))
    base = "configs/cifar10.py:densenet_bc_100_12"
    if arg == "smoke":
        return base, smoke(product(model=["densenet_bc_100_12", "resnet56"]), steps=100)
    return base, product(model=["densenet_bc_100_12", "resnet56", "resnet110"], seed=[0, 1, 2])
