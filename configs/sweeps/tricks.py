"""Bag of Tricks: ResNet-50's training refinements stacked one by one.

Claim: refinements that barely change the cost of training (large-batch heuristics, low
precision, two model tweaks, cosine decay, label smoothing, mixup) each add a little top-1, and
together lift ResNet-50 from 75.3 % to 79.29 % top-1 on ImageNet.
Source: He et al., "Bag of Tricks for Image Classification with Convolutional Neural
Networks", CVPR 2019 (arXiv:1812.01187v2). Checked against the text: Table 1 (ResNet-50
75.3/92.2 % top-1/top-5 as published; "ResNet-50 + tricks" 79.29/94.63 % at 4.3 GFLOPs, so with
model tweaks); Sec. 2.1's baseline (random-resized crop of 8-100 % of the area at aspect
3/4-4/3, flip, hue/saturation/brightness jitter in [0.6, 1.4], PCA noise 0.1, Nesterov
momentum, lr 0.1 divided by 10 at epochs 30, 60 and 90); Sec. 3.1 (lr 0.1 x b / 256; warmup
from 0 linearly over the first m batches, e.g. 5 epochs; zero gamma in the last BatchNorm of
each residual block; weight decay only on conv and fc weights); Sec. 4 (ResNet-B, -C, -D); Sec.
5.1 (cosine from the initial lr to 0), 5.2 (Eq. 4: 1 - eps on the label, eps / (K - 1) on the
others), 5.4 (mixup, lambda ~ Beta(alpha, alpha), mixed examples only). Weight decay 1e-4: the
authors' GluonCV train_imagenet.py default. Not checked (as we recall the paper; verify before
quoting): 120 epochs; eps = 0.1; alpha = 0.2 with 200 epochs for mixup; Table 4 (75.87 % at
batch 256 in FP32, 76.21 % at batch 1024 in FP16 with every Sec. 3 heuristic); Table 5
(ResNet-50 76.21, -B 76.66, -C 76.87, -D 77.16 %); Table 6, ResNet-50-D (Efficient 77.16,
+ cosine 77.91, + label smoothing 78.31, + distill w/o mixup 78.67, + mixup w/o distill 79.15,
+ distill w/ mixup 79.29 %).
Runs: resnet50 on the `resnext` recipe (batch 256, random-resized crop + flip + PCA lighting
0.1, center-crop evaluation), all with Nesterov momentum, 120 epochs, v1 strides, each adding
its knobs to every run before it: baseline -> batch 1024 at lr 0.4 -> + 5 warmup epochs -> +
zero gamma -> + no bias decay -> + bfloat16 -> + ResNet-B (`stride_in='3x3'`) -> + ResNet-C
(`stem='deep'`, width 32) -> + cosine -> + label smoothing 0.1 -> + mixup 0.2 at 200 epochs.
Then mixup at 120 epochs and label smoothing at 200 epochs (is the last gain mixup's or the
epochs'?), and beyond the paper, each on the last run: + CutMix 1.0 (switched with mixup half
the time), + RandAugment 2,9, + EMA 0.9999 (eval/ema_top1 in metrics.jsonl) with flip
evaluation (training unchanged).
Missing here: ResNet-D (Table 5: +0.29 % over -C, not checked), knowledge distillation (Table
6: +0.14 % with mixup, not checked), colour jitter, FP16 with loss scaling (bfloat16 instead),
Xavier initialisation (He's instead), BatchNorm per GPU (ours over the global batch). Step
boundaries are the recipe's fractions of the run: epochs 36/72/108 of 120. Label smoothing is
optax's (eps / K off the label), not Eq. 4.
Expected: each run at or above the one before within about 0.2 % (one seed); the Sec. 5 gains
near Table 6's (cosine +0.75, label smoothing +0.40, mixup +0.84 %, not checked); the last
paper run near 79.15 - 0.29 = 78.9 % top-1 (not checked), short of Table 1's 79.29 % by the
missing ResNet-D and distillation; mixup gains at 200 epochs more than at 120.
Smoke: resnet20 on CIFAR-10 (`he` recipe), 4 runs of 40 steps at batch 32, one evaluation:
baseline; + linear-scaled lr, warmup, zero gamma, no bias decay; + cosine, label smoothing,
mixup; + CutMix, RandAugment, EMA, gradient clipping (norm 1.0; no cited ResNet-50 recipe
clips) and flip evaluation. It shows that the knobs run together, not what they do; it leaves
out bfloat16 (slow on CPU) and ResNet-B/C (bottleneck and ImageNet-stem tweaks). About 11
minutes on a loaded 2-core CPU.
Command: python sweep.py --sweep=configs/sweeps/tricks.py --workdir=runs/tricks
         --launcher=slurm --parallel=8 && python -m archs.training.report runs/tricks
Smoke:   python sweep.py --sweep=configs/sweeps/tricks.py:smoke --workdir=/tmp/tricks
"""

from collections.abc import Mapping, Sequence
from typing import Any

from archs.training.sweep import Overrides, check_arg, smoke

# The paper's baseline on the `resnext` recipe: its ResNet-50 (v1), optimizer and length.
BASELINE = {"model_kwargs.stride_in": "1x1", "nesterov": True, "num_epochs": 120}
# Tables 4, 5 and 6 in order; each row's knobs are added to every row before it.
PAPER_ROWS = (
    {"batch_size": 1024, "learning_rate": 0.1 * 1024 / 256},  # linear scaling, Sec. 3.1
    {"warmup_epochs": 5},  # Sec. 3.1
    {"model_kwargs.zero_init_residual": True},  # zero gamma, Sec. 3.1
    {"weight_decay_exclude_norm_bias": True},  # no bias decay, Sec. 3.1
    {"dtype": "bfloat16"},  # low precision, Sec. 3.2
    {"model_kwargs.stride_in": "3x3"},  # ResNet-B, Sec. 4
    {"model_kwargs.stem": "deep", "model_kwargs.stem_width": 32},  # ResNet-C, Sec. 4
    {"schedule": "cosine"},  # Sec. 5.1
    {"label_smoothing": 0.1},  # Sec. 5.2
    {"mixup_alpha": 0.2, "num_epochs": 200},  # Sec. 5.4
)
# Beyond the paper, each on its last row.
EXTRA_ARMS = (
    {"cutmix_alpha": 1.0},
    {"randaugment": "2,9"},
    {"ema_decay": 0.9999, "eval_protocol": "flip"},
)

SMOKE_STEPS = 40
SMOKE_BASELINE = {"nesterov": True}
SMOKE_ROWS = (
    {
        "learning_rate": 0.1 * 32 / 128,  # the `he` recipe's rate, scaled to batch 32
        "warmup_epochs": 0.01,  # 16 steps
        "model_kwargs.zero_init_residual": True,
        "weight_decay_exclude_norm_bias": True,
    },
    {"schedule": "cosine", "label_smoothing": 0.1, "mixup_alpha": 0.2},
    {
        "cutmix_alpha": 1.0,
        "randaugment": "2,9",
        "ema_decay": 0.99,
        "grad_clip_norm": 1.0,
        "eval_protocol": "flip",
    },
)


def add(run: Mapping[str, Any], knobs: Mapping[str, Any]) -> Overrides:
    """`run` with `knobs` set, the knobs first so that the run's name starts with them."""
    return {**knobs, **{key: value for key, value in run.items() if key not in knobs}}


def stack(baseline: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[Overrides]:
    """The baseline, then each row added to everything before it."""
    runs = [dict(baseline)]
    for knobs in rows:
        runs.append(add(runs[-1], knobs))
    return runs


def get_sweep(arg=None):
    check_arg(arg, ("smoke",))
    if arg == "smoke":
        runs = stack(SMOKE_BASELINE, SMOKE_ROWS)
        return "configs/cifar10.py:resnet20,he", smoke(runs, steps=SMOKE_STEPS)
    paper = stack(BASELINE, PAPER_ROWS)
    smoothing, last = paper[-2], paper[-1]
    isolating = [add(smoothing, {key: value}) for key, value in PAPER_ROWS[-1].items()]
    extras = [add(last, knobs) for knobs in EXTRA_ARMS]
    return "configs/imagenet.py:resnet50,resnext", paper + isolating + extras
