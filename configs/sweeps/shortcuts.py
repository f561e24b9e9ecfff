"""Shortcut options A/B/C, and where a bottleneck block strides ('1x1' v1 vs '3x3' v1.5).

Claim: projection shortcuts help a little over zero-padding identity shortcuts (B over A,
because A's padded channels learn no residual) and projecting everywhere (C) a little more, too
little to be worth C's extra parameters; moving the stride of a bottleneck block from its first
1x1 conv (v1) to its 3x3 conv (v1.5) raises accuracy at a small cost in compute.
Source: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Table 3 (ResNet-34
top-1 error, 10-crop: A 25.03, B 24.52, C 24.19 %); v1.5: NVIDIA DeepLearningExamples,
"ResNet50 v1.5" model card (about +0.5 % top-1 over v1, about 5 % slower) and torchvision's
resnet50, which is v1.5.
Expected: top-1 A < B < C by about 0.5 % each; 3x3 > 1x1 by about 0.5 %; C has about 4 % more
parameters than B (its 13 extra projections, Sec. 4.1: 22.72 M against 21.80 M in our
resnet34). Smoke: the same comparisons on CIFAR-10 for 200 steps (resnet20 shortcuts; stride_in
on resnet50 at 32x32), which only checks that every variant trains.
Command: python sweep.py --sweep=configs/sweeps/shortcuts.py --workdir=runs/shortcuts
         --launcher=slurm --parallel=5 && python -m archs.training.report runs/shortcuts
Smoke:   python sweep.py --sweep=configs/sweeps/shortcuts.py:smoke --workdir=/tmp/shortcuts
"""

from archs.training.sweep import check_arg, product, smoke


def get_sweep(arg=None):
    check_arg(arg, ("smoke",))
    small = arg == "smoke"
    shortcuts = product(
        model=["resnet20" if small else "resnet34"], **{"model_kwargs.shortcut": ["A", "B", "C"]}
    )
    stride_in = product(model=["resnet50"], **{"model_kwargs.stride_in": ["1x1", "3x3"]})
    if small:
        stride_in = product(stride_in, image_size=[32])
        return "configs/cifar10.py:resnet20", smoke(shortcuts + stride_in)
    return "configs/imagenet.py:resnet34", shortcuts + stride_in
