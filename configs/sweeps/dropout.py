"""Classifier dropout on and off: without it the large fully connected heads overfit.

Claim: AlexNet "exhibits substantial overfitting" without dropout in its first two fully
connected layers; dropout roughly doubles the iterations to converge.
Source: Krizhevsky et al., "ImageNet Classification with Deep Convolutional Neural Networks",
NIPS 2012, Sec. 4.2; Srivastava et al., "Dropout", JMLR 2014, Sec. 6.1.
Expected: drop_rate=0.0 ends with a higher train top-1 and a lower eval top-1 than 0.5 (compare
the report's curves). Smoke: vgg11 on CIFAR-10 (AlexNet needs at least 63-pixel inputs) with
drop_rate 0.5 and 0.0, 200 steps.
Command: python sweep.py --sweep=configs/sweeps/dropout.py --workdir=runs/dropout
         --launcher=slurm --parallel=2 && python -m archs.training.report runs/dropout
Smoke:   python sweep.py --sweep=configs/sweeps/dropout.py:smoke --workdir=/tmp/dropout
"""

from archs.training.sweep import check_arg, product, smoke


def get_sweep(arg=None):
    check_arg(arg, ("smoke",))
    model = "vgg11" if arg == "smoke" else "alexnet"
    runs = product(model=[model], **{"model_kwargs.drop_rate": [0.5, 0.0]})
    if arg == "smoke":
        return "configs/cifar10.py:vgg11", smoke(runs)
    return "configs/imagenet.py:alexnet", runs
