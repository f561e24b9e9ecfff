"""Stacked 3x3 convolutions against one larger kernel with the same receptive field.

Claim: a stack of three 3x3 conv layers sees a 7x7 field with 27C^2 weights where one 7x7 layer
needs 49C^2 (a pair of 3x3: 18C^2 against one 5x5: 25C^2), and the stack is more
discriminative (more non-linearities) as well as cheaper.
Source: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015, Sec. 2.3 (the parameter argument) and Sec. 4.1 (net B against a
shallow net with each pair of 3x3 layers replaced by one 5x5: 7 % higher top-1 error, centre
crop).
Expected: vgg13 with its pairs merged into 5x5 convs has more conv parameters and about 7 %
lower top-1 than vgg13; vgg16 with its triples merged into 7x7 convs likewise against vgg16
(ours: the paper tests only the net-B pair).
Smoke: the vgg13 pair on CIFAR-10 for 100 steps.
Command: python sweep.py --sweep=configs/sweeps/kernel_3x3.py --workdir=runs/kernel_3x3
         --launcher=slurm --parallel=4 && python -m archs.training.report runs/kernel_3x3
Smoke:   python sweep.py --sweep=configs/sweeps/kernel_3x3.py:smoke --workdir=/tmp/kernel
"""

from archs.training.sweep import check_arg, smoke

# archs/vgg.py configs: an int is a 3x3 conv of that width, (width, k) a kxk conv, 'M' a pool.
B_MERGED = ((64, 5), "M", (128, 5), "M", (256, 5), "M", (512, 5), "M", (512, 5), "M")
D_MERGED = ((64, 5), "M", (128, 5), "M", (256, 7), "M", (512, 7), "M", (512, 7), "M")


def get_sweep(arg=None):
    check_arg(arg, ("smoke",))
    vgg13 = [
        {"model": "vgg13", "model_kwargs.config": "B"},
        {"model": "vgg13", "model_kwargs.config": B_MERGED},
    ]
    if arg == "smoke":
        return "configs/cifar10.py:vgg13", smoke(vgg13, steps=100)
    vgg16 = [
        {"model": "vgg16", "model_kwargs.config": "D"},
        {"model": "vgg16", "model_kwargs.config": D_MERGED},
    ]
    return "configs/imagenet.py:vgg13", vgg13 + vgg16
