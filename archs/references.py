"""Published figures every model is checked against, with where each number comes from.

`params` counts trainable parameters as torchvision/timm do (BatchNorm scale and bias, not
running statistics). `gmacs` is multiply-accumulates of convolutions and dense layers for one
image at the model's default resolution, in billions: for torchvision/timm structures, what
`torch.utils.flop_counter.FlopCounterMode` counts on the reference implementation, halved;
for the papers' own networks, the MACs of the paper's layer table (`paper_macs` below computes
those from the tables, independently of our modules).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Reference:
    params: int
    gmacs: float | None
    source: str


TV = "torchvision 0.29 ({}): params from the model builder, GMACs by FlopCounterMode / 2"
TIMM = "timm 1.0 ({}): params from the model, GMACs by FlopCounterMode / 2"


def _tv(params: int, gmacs: float | None, name: str) -> Reference:
    return Reference(params, gmacs, TV.format(name))


def _timm(params: int, gmacs: float | None, name: str) -> Reference:
    return Reference(params, gmacs, TIMM.format(name))


REFERENCES: dict[str, Reference] = {
    # AlexNet family.
    "alexnet": _tv(61_100_840, 0.714188, "torchvision.models.alexnet"),
    "alexnet_lrn": Reference(
        60_965_224, None, "Krizhevsky et al. 2012, Fig. 2 (two towers as groups), 227x227"
    ),
    "alexnet_bn": Reference(
        60_966_440, None, "alexnet_lrn with BatchNorm after every conv (count derived: +2x1216)"
    ),
    "zfnet": Reference(62_357_608, 1.17, "Zeiler & Fergus 2014, Fig. 3 (dense, 224x224)"),
    # VGG (Simonyan & Zisserman 2015, Table 1 / Table 2).
    "vgg11": _tv(132_863_336, 7.609090, "torchvision.models.vgg11"),
    "vgg11_lrn": Reference(132_863_336, None, "Simonyan & Zisserman 2015, Table 1, config A-LRN"),
    "vgg13": _tv(133_047_848, 11.308466, "torchvision.models.vgg13"),
    "vgg16_c": Reference(133_638_952, None, "Simonyan & Zisserman 2015, Table 1, config C"),
    "vgg16": _tv(138_357_544, 15.470264, "torchvision.models.vgg16"),
    "vgg19": _tv(143_667_240, 19.632062, "torchvision.models.vgg19"),
    "vgg11_bn": _tv(132_868_840, 7.609090, "torchvision.models.vgg11_bn"),
    "vgg13_bn": _tv(133_053_736, 11.308466, "torchvision.models.vgg13_bn"),
    "vgg16_bn": _tv(138_365_992, 15.470264, "torchvision.models.vgg16_bn"),
    "vgg19_bn": _tv(143_678_248, 19.632062, "torchvision.models.vgg19_bn"),
    # GoogLeNet (Szegedy et al. 2015).
    "googlenet": _tv(6_624_904, 1.498, "torchvision.models.googlenet, aux heads excluded"),
    "inception_v1": Reference(
        6_998_552, None, "Szegedy et al. 2015, Table 1 with biases, aux heads excluded"
    ),
    # ResNet (He et al. 2016), torchvision v1.5.
    "resnet18": _tv(11_689_512, 1.814, "torchvision.models.resnet18"),
    "resnet34": _tv(21_797_672, 3.664, "torchvision.models.resnet34"),
    "resnet50": _tv(25_557_032, 4.089, "torchvision.models.resnet50"),
    "resnet101": _tv(44_549_160, 7.801, "torchvision.models.resnet101"),
    "resnet152": _tv(60_192_808, 11.514, "torchvision.models.resnet152"),
    "plain18": Reference(11_515_688, None, "He et al. 2016, Table 1 without shortcuts"),
    "plain34": Reference(21_623_848, None, "He et al. 2016, Table 1 without shortcuts"),
    # ResNeXt (Xie et al. 2017).
    "resnext50_32x4d": _tv(25_028_904, 4.227, "torchvision.models.resnext50_32x4d"),
    "resnext101_32x4d": _timm(44_177_704, 8.012, "timm resnext101_32x4d"),
    "resnext101_32x8d": _tv(88_791_336, 16.414, "torchvision.models.resnext101_32x8d"),
    "resnext101_64x4d": _tv(83_455_272, 15.460, "torchvision.models.resnext101_64x4d"),
    # DenseNet (Huang et al. 2017).
    "densenet121": _tv(7_978_856, 2.834, "torchvision.models.densenet121"),
    "densenet161": _tv(28_681_000, 7.728, "torchvision.models.densenet161"),
    "densenet169": _tv(14_149_480, 3.360, "torchvision.models.densenet169"),
    "densenet201": _tv(20_013_928, 4.291, "torchvision.models.densenet201"),
    "densenet264": Reference(33_337_704, None, "Huang et al. 2017, Table 1, DenseNet-264 (k=32)"),
    # SENet (Hu et al. 2018), timm 1.0.
    "seresnet50": _timm(28_088_024, 4.11, "timm seresnet50"),
    "seresnet101": _timm(49_326_872, 7.84, "timm seresnet101"),
    "seresnet152": _timm(66_821_848, 11.57, "timm seresnet152"),
    "seresnext50_32x4d": _timm(27_559_896, 4.26, "timm seresnext50_32x4d"),
    "seresnext101_32x4d": _timm(48_955_416, 8.02, "timm seresnext101_32x4d"),
    "senet154": _timm(115_088_984, 20.77, "timm senet154"),
    # Inception-ResNet-v2 (Szegedy et al. 2017), timm 1.0, 299x299.
    "inception_resnet_v2": _timm(55_843_464, 13.16, "timm inception_resnet_v2"),
    # CIFAR networks (He et al. 2016 Sec. 4.2; Xie et al. 2017; Huang et al. 2017).
    "resnet20": Reference(269_722, None, "He et al. 2016, Sec. 4.2, n=3, option A"),
    "resnet32": Reference(464_154, None, "He et al. 2016, Sec. 4.2, n=5, option A"),
    "resnet44": Reference(658_586, None, "He et al. 2016, Sec. 4.2, n=7, option A"),
    "resnet56": Reference(853_018, None, "He et al. 2016, Sec. 4.2, n=9, option A"),
    "resnet110": Reference(1_727_962, None, "He et al. 2016, Sec. 4.2, n=18, option A"),
    "resnet1202": Reference(19_421_274, None, "He et al. 2016, Sec. 4.2, n=200, option A"),
    "plain20": Reference(269_722, None, "He et al. 2016, Sec. 4.2, n=3, no shortcuts"),
    "plain32": Reference(464_154, None, "He et al. 2016, Sec. 4.2, n=5, no shortcuts"),
    "plain44": Reference(658_586, None, "He et al. 2016, Sec. 4.2, n=7, no shortcuts"),
    "plain56": Reference(853_018, None, "He et al. 2016, Sec. 4.2, n=9, no shortcuts"),
    "plain110": Reference(1_727_962, None, "He et al. 2016, Sec. 4.2, n=18, no shortcuts"),
    "resnext29_8x64d": Reference(34_426_698, None, "Xie et al. 2017, Sec. 5.3, CIFAR-10"),
    "resnext29_16x64d": Reference(68_155_210, None, "Xie et al. 2017, Sec. 5.3, CIFAR-10"),
    "densenet_bc_100_12": Reference(769_162, None, "Huang et al. 2017, Table 2, CIFAR-10"),
}
