"""Degradation: deeper plain nets train worse; residual nets of the same depth train better.

Claim: stacking more layers on a plain CIFAR-10 net raises its training and test error (plain-56
is worse than plain-20), while the same nets with identity shortcuts improve with depth.
Source: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Fig. 6 (left: plain,
middle: ResNet) and Table 6 (ResNet-20/32/44/56 test error 8.75/7.51/7.17/6.97 %).
Expected: final eval top-1 falls with depth for plain-20..56 and rises for resnet-20..56 (about
91.3 -> 93.0 %); plain-56 ends several points below plain-20. The smoke variant (200 steps)
checks that every net trains and reports; it is too short to show the effect. The cpu variant
(600 steps of 32 images, about 0.4 epoch, lr 0.1 * 32 / 128, eval every 200 steps) can show only
the start of Fig. 6. Measured (one seed, 2-core CPU, 34 min): final eval top-1 plain20 36.5,
plain56 14.1, resnet20 41.0, resnet56 37.7 %; plain56 barely trains, resnet56 does
(docs/research.md).
Command: python sweep.py --sweep=configs/sweeps/degradation.py --workdir=runs/degradation
         --parallel=4 && python -m archs.training.report runs/degradation
Smoke:   python sweep.py --sweep=configs/sweeps/degradation.py:smoke --workdir=/tmp/degradation
CPU:     python sweep.py --sweep=configs/sweeps/degradation.py:cpu --workdir=/tmp/degradation_cpu
"""

from archs.training.sweep import check_arg, product, smoke

DEPTHS = (20, 32, 44, 56)


def get_sweep(arg=None):
    check_arg(arg, ("smoke", "cpu"))
    if arg in ("smoke", "cpu"):
        runs = product(model=["plain20", "plain56", "resnet20", "resnet56"], seed=[0])
        if arg == "smoke":
            return "configs/cifar10.py:resnet20", smoke(runs)
        # He et al.'s lr 0.1 at batch 128, scaled linearly to batch 32.
        cpu = {"num_train_steps": 600, "batch_size": 32, "learning_rate": 0.025}
        cpu["eval_every_steps"] = 200
        return "configs/cifar10.py:resnet20", product(runs, [cpu])
    models = [f"{kind}{depth}" for kind in ("plain", "resnet") for depth in DEPTHS]
    return "configs/cifar10.py:resnet20", product(model=models, seed=[0, 1, 2])
