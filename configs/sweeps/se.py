"""Squeeze-and-excitation on and off, and its reduction ratio.

Claim: SE blocks add about 10 % parameters and almost no compute to ResNet-50 and cut its
top-1 error by about 1.5 %; the reduction ratio r trades parameters for accuracy, flat from
r = 2 to 16, worse at 32.
Source: Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018 / TPAMI 2019 (table numbers of
the TPAMI version): Table 2 (ResNet-50 24.80 vs SE-ResNet-50 23.29 % top-1 error,
re-implementations, Sec. 5.1's schedule) and Table 10 (SE-ResNet-50 with r = 2/4/8/16/32:
22.29/22.25/22.26/22.28/22.72 % top-1 error, 45.7/35.7/30.7/28.1/26.9 M parameters; ResNet-50
23.30 %), whose ablations (Sec. 6) train from lr 0.1 for about 300 epochs with label smoothing
and no biases in the excitation's fc layers.
Expected: attention=se above none by about 1.5 % top-1 at r = 16; r = 4..16 within 0.1 %; params
matching Table 10 (checked by the report's params column). Smoke: resnet20 on CIFAR-10 with SE
off and r = 4/16, 200 steps.
Command: python sweep.py --sweep=configs/sweeps/se.py --workdir=runs/se --launcher=slurm
         --parallel=6 && python -m archs.training.report runs/se
Smoke:   python sweep.py --sweep=configs/sweeps/se.py:smoke --workdir=/tmp/se
"""

from archs.training.sweep import check_arg, product, smoke


def get_sweep(arg=None):
    check_arg(arg, ("smoke",))
    model = "resnet20" if arg == "smoke" else "resnet50"
    ratios = [4, 16] if arg == "smoke" else [2, 4, 8, 16, 32]
    runs = [{"model": model, "model_kwargs.attention": "none"}]
    runs += product(
        model=[model], **{"model_kwargs.attention": ["se"], "model_kwargs.se_reduction": ratios}
    )
    if arg == "smoke":
        return "configs/cifar10.py:resnet20", smoke(runs)
    return "configs/imagenet.py:resnet50", runs
