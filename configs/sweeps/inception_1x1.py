"""Inception's 1x1 bottlenecks: the same module without its 1x1 reductions costs far more.

Claim: the 1x1 convolutions in front of the 3x3 and 5x5 branches of an Inception module reduce
its cost enough to stack many modules, at no loss of accuracy; the "naive" module without them
blows up in computation from stage to stage.
Source: Szegedy et al., "Going Deeper with Convolutions", CVPR 2015, Sec. 4 and Fig. 2 (a:
naive module, b: with dimension reductions).
Expected: without reductions, several times the GMACs and parameters (see the report's params
and GMACs columns), with top-1 no better than with them. Smoke: both on CIFAR-10 for 200 steps.
Command: python sweep.py --sweep=configs/sweeps/inception_1x1.py --workdir=runs/inception_1x1
         --launcher=slurm --parallel=2 && python -m archs.training.report runs/inception_1x1
Smoke:   python sweep.py --sweep=configs/sweeps/inception_1x1.py:smoke --workdir=/tmp/incep
"""

from archs.training.sweep import check_arg, product, smoke

# The googlenet override that keeps (True) or drops (False) the 1x1 reductions.
REDUCE_1X1 = "model_kwargs.reduction_1x1"


def get_sweep(arg=None):
    check_arg(arg, ("smoke",))
    runs = product(model=["googlenet"], **{REDUCE_1X1: [True, False]})
    if arg == "smoke":
        return "configs/cifar10.py:googlenet", smoke(runs, steps=100, batch_size=16)
    return "configs/imagenet.py:googlenet", runs
