"""Local response normalisation: it helped AlexNet, it does not help VGG, BatchNorm replaces it.

Claim: LRN lowered AlexNet's error; in the deeper VGG-A it brings nothing (A-LRN is no better
than A), and BatchNorm, which came later, does more than LRN did.
Source: Krizhevsky et al., "ImageNet Classification with Deep Convolutional Neural Networks",
NIPS 2012, Sec. 3.3 (LRN reduces top-1/top-5 error by 1.4/1.2 %); Simonyan & Zisserman, "Very
Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015, Table 3 (A 29.6/10.4,
A-LRN 29.7/10.5 % top-1/top-5 error); Ioffe & Szegedy, ICML 2015 (BatchNorm).
Expected: vgg11 and vgg11_lrn within 0.3 % top-1; alexnet with LRN about 1 % above plain
alexnet and alexnet with BatchNorm above both. Smoke: vgg11 vs vgg11_lrn on CIFAR-10 for 200
steps (AlexNet needs inputs of at least 63 pixels, so it is left out of the smoke variant).
Command: python sweep.py --sweep=configs/sweeps/lrn.py --workdir=runs/lrn --launcher=slurm
         --parallel=5 && python -m archs.training.report runs/lrn
Smoke:   python sweep.py --sweep=configs/sweeps/lrn.py:smoke --workdir=/tmp/lrn
"""

from archs.training.sweep import check_arg, product, smoke

ALEXNET = [
    {"model": "alexnet"},
    {"model": "alexnet", "model_kwargs.lrn": True},
    {"model": "alexnet", "model_kwargs.batch_norm": True},
]


def get_sweep(arg=None):
    check_arg(arg, ("smoke",))
    vgg = product(model=["vgg11", "vgg11_lrn"])
    if arg == "smoke":
        return "configs/cifar10.py:vgg11", smoke(vgg)
    return "configs/imagenet.py:vgg11", vgg + ALEXNET
