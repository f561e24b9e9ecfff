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


def densenet_paper_gmacs(
    block_config: tuple[int, ...], growth_rate: int, num_classes: int, *, cifar: bool = False
) -> float:
    """GMACs of a DenseNet-BC (bottleneck 4k, compression 0.5, 2k initial features) from Huang
    et al. 2017: Table 1's layers at 224x224 (7x7/2 conv, 3x3/2 max pool, blocks at 56, 28, 14,
    7) or, with `cifar`, Sec. 3's CIFAR net at 32x32 (one 3x3 conv, blocks at 32, 16, 8)."""
    k = growth_rate
    channels = 2 * k
    macs, size = (32 * 32 * 9 * 3 * channels, 32) if cifar else (112 * 112 * 49 * 3 * channels, 56)
    for i, layers in enumerate(block_config):
        # Layer j sees channels + j*k inputs: a 1x1 conv to 4k, then a 3x3 conv from 4k to k.
        inputs = layers * channels + k * layers * (layers - 1) // 2
        macs += size * size * 4 * k * (inputs + 9 * k * layers)
        channels += layers * k
        if i < len(block_config) - 1:  # transition: 1x1 conv to half, then 2x2 average pool
            macs += size * size * channels * (channels // 2)
            channels //= 2
            size //= 2
    return (macs + channels * num_classes) / 1e9


def paper_macs(rows: list[tuple[int, int, int, int]]) -> float:
    """GMACs of a layer table whose rows are (output size, output channels, input channels per
    group, kernel size); a fully connected layer is (1, outputs, inputs, 1)."""
    return sum(size * size * out * inputs * k * k for size, out, inputs, k in rows) / 1e9


# Krizhevsky et al. 2012, Fig. 2 at 227x227: conv2, conv4 and conv5 see one tower's half.
ALEXNET_PAPER_ROWS = [
    *((55, 96, 3, 11), (27, 256, 48, 5), (13, 384, 256, 3), (13, 384, 192, 3)),
    *((13, 256, 192, 3), (1, 4096, 256 * 6 * 6, 1), (1, 4096, 4096, 1), (1, 1000, 4096, 1)),
]


def vgg_paper_rows(stages: list[list[tuple[int, int]]]) -> list[tuple[int, int, int, int]]:
    """Simonyan & Zisserman 2015, Table 1 at 224x224: stage i's (width, kernel) convs at
    224 / 2**i, then FC-4096, FC-4096, FC-1000 on the 7x7x512 map."""
    rows, inputs = [], 3
    for i, convs in enumerate(stages):
        for width, kernel in convs:
            rows.append((224 >> i, width, inputs, kernel))
            inputs = width
    return [*rows, (1, 4096, 512 * 7 * 7, 1), (1, 4096, 4096, 1), (1, 1000, 4096, 1)]


VGG_A_STAGES = [[(64, 3)], [(128, 3)], [(256, 3)] * 2, [(512, 3)] * 2, [(512, 3)] * 2]
VGG_C_STAGES = [[(64, 3)] * 2, [(128, 3)] * 2, *[[(c, 3), (c, 3), (c, 1)] for c in (256, 512, 512)]]

# Szegedy et al. 2015, Table 1, Inception modules 3a to 5b: (output size, #1x1, #3x3 reduce,
# #3x3, #5x5 reduce, #5x5, pool proj).
GOOGLENET_TABLE1 = [
    *((28, 64, 96, 128, 16, 32, 32), (28, 128, 128, 192, 32, 96, 64)),
    *((14, 192, 96, 208, 16, 48, 64), (14, 160, 112, 224, 24, 64, 64)),
    *((14, 128, 128, 256, 24, 64, 64), (14, 112, 144, 288, 32, 64, 64)),
    *((14, 256, 160, 320, 32, 128, 128), (7, 256, 160, 320, 32, 128, 128)),
    (7, 384, 192, 384, 48, 128, 128),
]


def googlenet_paper_rows() -> list[tuple[int, int, int, int]]:
    """Table 1 of Szegedy et al. 2015 at 224x224 as `paper_macs` rows: the stem's 7x7/2 conv 64,
    1x1 conv 64 and 3x3 conv 192, each Inception module's six convolutions (its input depth is
    the previous module's output depth), the 1000-way linear layer; aux heads excluded."""
    rows, depth = [(112, 64, 3, 7), (56, 64, 64, 1), (56, 192, 64, 3)], 192
    for size, n1, r3, n3, r5, n5, proj in GOOGLENET_TABLE1:
        rows += [(size, n1, depth, 1), (size, r3, depth, 1), (size, n3, r3, 3)]
        rows += [(size, r5, depth, 1), (size, n5, r5, 5), (size, proj, depth, 1)]
        depth = n1 + n3 + n5 + proj
    return [*rows, (1, 1000, depth, 1)]


def basic_resnet_rows(
    stem: tuple[int, int, int, int],
    sizes: tuple[int, ...],
    widths: tuple[int, ...],
    depths: tuple[int, ...],
    num_classes: int,
) -> list[tuple[int, int, int, int]]:
    """He et al. 2016 as `paper_macs` rows: the stem conv, then stage i's 2*depth 3x3 convs at
    sizes[i] (Table 1 at 224: 56, 28, 14, 7; Sec. 4.2 on CIFAR: 32, 16, 8), then the linear
    layer. Option A and plain nets have no shortcut convolutions."""
    rows, inputs = [stem], stem[1]
    for size, width, depth in zip(sizes, widths, depths, strict=True):
        rows += [(size, width, inputs, 3)] + [(size, width, width, 3)] * (2 * depth - 1)
        inputs = width
    return [*rows, (1, num_classes, inputs, 1)]


def resnext29_rows(cardinality: int) -> list[tuple[int, int, int, int]]:
    """Xie et al. 2017, Sec. 5.3: a 3x3 conv 64 on 32x32, three stages of three bottlenecks
    (width 64 per group in stage 1, doubling; outputs 256, 512, 1024; stride in the 3x3;
    projection shortcut where the shape changes), then a 10-way linear layer."""
    rows, inputs, in_size = [(32, 64, 3, 3)], 64, 32
    for size, planes in ((32, 64), (16, 128), (8, 256)):
        width, out = planes * cardinality, planes * 4
        for block in range(3):
            source = in_size if block == 0 else size
            rows += [(source, width, inputs, 1), (size, width, planes, 3), (size, out, width, 1)]
            if block == 0:
                rows.append((size, out, inputs, 1))
            inputs = out
        in_size = size
    return [*rows, (1, 10, inputs, 1)]


def cifar_resnet_gmacs(n: int) -> float:
    """He et al. 2016, Sec. 4.2: the 6n+2-layer CIFAR net (16, 32, 64 filters at 32, 16, 8)."""
    return paper_macs(basic_resnet_rows((32, 16, 3, 3), (32, 16, 8), (16, 32, 64), (n,) * 3, 10))


def plain_imagenet_gmacs(depths: tuple[int, ...]) -> float:
    """He et al. 2016, Table 1's 18/34-layer nets without shortcuts at 224x224."""
    return paper_macs(
        basic_resnet_rows((112, 64, 3, 7), (56, 28, 14, 7), (64, 128, 256, 512), depths, 1000)
    )


REFERENCES: dict[str, Reference] = {
    # AlexNet family.
    "alexnet": _tv(61_100_840, 0.714188, "torchvision.models.alexnet"),
    "alexnet_lrn": Reference(
        60_965_224,
        paper_macs(ALEXNET_PAPER_ROWS),
        "Krizhevsky et al. 2012, Fig. 2 (two towers as groups), 227x227; GMACs by paper_macs",
    ),
    "alexnet_bn": Reference(
        60_966_600,
        paper_macs(ALEXNET_PAPER_ROWS),
        "alexnet_lrn with BatchNorm after every conv in place of LRN, conv biases dropped: "
        "60,965,224 + 2x1,376 (BN scale, shift) - 1,376 (biases); GMACs as alexnet_lrn",
    ),
    "zfnet": Reference(62_357_608, 1.17, "Zeiler & Fergus 2014, Fig. 3 (dense, 224x224)"),
    # VGG (Simonyan & Zisserman 2015, Table 1 / Table 2).
    "vgg11": _tv(132_863_336, 7.609090, "torchvision.models.vgg11"),
    "vgg11_lrn": Reference(
        132_863_336,
        paper_macs(vgg_paper_rows(VGG_A_STAGES)),
        "Simonyan & Zisserman 2015, Table 1, config A-LRN; GMACs by paper_macs",
    ),
    "vgg13": _tv(133_047_848, 11.308466, "torchvision.models.vgg13"),
    "vgg16_c": Reference(
        133_638_952,
        paper_macs(vgg_paper_rows(VGG_C_STAGES)),
        "Simonyan & Zisserman 2015, Table 1, config C; GMACs by paper_macs",
    ),
    "vgg16": _tv(138_357_544, 15.470264, "torchvision.models.vgg16"),
    "vgg19": _tv(143_667_240, 19.632062, "torchvision.models.vgg19"),
    "vgg11_bn": _tv(132_868_840, 7.609090, "torchvision.models.vgg11_bn"),
    "vgg13_bn": _tv(133_053_736, 11.308466, "torchvision.models.vgg13_bn"),
    "vgg16_bn": _tv(138_365_992, 15.470264, "torchvision.models.vgg16_bn"),
    "vgg19_bn": _tv(143_678_248, 19.632062, "torchvision.models.vgg19_bn"),
    # GoogLeNet (Szegedy et al. 2015).
    "googlenet": _tv(
        13_004_888,
        1.498376,
        "torchvision.models.googlenet, with both aux heads (6,624,904 without)",
    ),
    "inception_v1": Reference(
        13_378_280,
        paper_macs(googlenet_paper_rows()),
        "Szegedy et al. 2015, Table 1 with biases, with both aux heads (6,998,552 without; the "
        "table's 6.8M total carries typos); GMACs by paper_macs, aux heads excluded",
    ),
    # ResNet (He et al. 2016), torchvision v1.5.
    "resnet18": _tv(11_689_512, 1.814073, "torchvision.models.resnet18"),
    "resnet34": _tv(21_797_672, 3.663761, "torchvision.models.resnet34"),
    "resnet50": _tv(25_557_032, 4.089184, "torchvision.models.resnet50"),
    "resnet101": _tv(44_549_160, 7.801405, "torchvision.models.resnet101"),
    "resnet152": _tv(60_192_808, 11.513627, "torchvision.models.resnet152"),
    "plain18": Reference(
        11_515_688, plain_imagenet_gmacs((2, 2, 2, 2)), "He et al. 2016, Table 1 without shortcuts"
    ),
    "plain34": Reference(
        21_623_848, plain_imagenet_gmacs((3, 4, 6, 3)), "He et al. 2016, Table 1 without shortcuts"
    ),
    # ResNeXt (Xie et al. 2017).
    "resnext50_32x4d": _tv(25_028_904, 4.230480, "torchvision.models.resnext50_32x4d"),
    "resnext101_32x4d": _timm(44_177_704, 7.969997, "timm resnext101_32x4d"),
    "resnext101_32x8d": _tv(88_791_336, 16.414015, "torchvision.models.resnext101_32x8d"),
    "resnext101_64x4d": _tv(83_455_272, 15.460270, "torchvision.models.resnext101_64x4d"),
    # DenseNet (Huang et al. 2017).
    "densenet121": _tv(7_978_856, 2.834162, "torchvision.models.densenet121"),
    "densenet161": _tv(28_681_000, 7.727907, "torchvision.models.densenet161"),
    "densenet169": _tv(14_149_480, 3.359843, "torchvision.models.densenet169"),
    "densenet201": _tv(20_013_928, 4.291366, "torchvision.models.densenet201"),
    "densenet264": Reference(
        33_337_704,
        densenet_paper_gmacs((6, 12, 64, 48), 32, 1000),
        "Huang et al. 2017, Table 1, DenseNet-264 (k=32); GMACs: densenet_paper_gmacs",
    ),
    # SENet (Hu et al. 2018), timm 1.0.
    "seresnet50": _timm(28_088_024, 4.091699, "timm seresnet50"),
    "seresnet101": _timm(49_326_872, 7.806149, "timm seresnet101"),
    "seresnet152": _timm(66_821_848, 11.520205, "timm seresnet152"),
    "seresnext50_32x4d": _timm(27_559_896, 4.232995, "timm seresnext50_32x4d"),
    "seresnext101_32x4d": _timm(48_955_416, 7.974740, "timm seresnext101_32x4d"),
    "senet154": _timm(115_088_984, 20.688364, "timm senet154"),
    # Inception-ResNet-v2 (Szegedy et al. 2017), timm 1.0, 299x299.
    "inception_resnet_v2": _timm(55_843_464, 13.155794, "timm inception_resnet_v2"),
    # CIFAR networks (He et al. 2016 Sec. 4.2; Xie et al. 2017; Huang et al. 2017).
    "resnet20": Reference(
        269_722, cifar_resnet_gmacs(3), "He et al. 2016, Sec. 4.2, n=3, option A"
    ),
    "resnet32": Reference(
        464_154, cifar_resnet_gmacs(5), "He et al. 2016, Sec. 4.2, n=5, option A"
    ),
    "resnet44": Reference(
        658_586, cifar_resnet_gmacs(7), "He et al. 2016, Sec. 4.2, n=7, option A"
    ),
    "resnet56": Reference(
        853_018, cifar_resnet_gmacs(9), "He et al. 2016, Sec. 4.2, n=9, option A"
    ),
    "resnet110": Reference(
        1_727_962, cifar_resnet_gmacs(18), "He et al. 2016, Sec. 4.2, n=18, option A"
    ),
    "resnet1202": Reference(
        19_421_274, cifar_resnet_gmacs(200), "He et al. 2016, Sec. 4.2, n=200, option A"
    ),
    "plain20": Reference(
        269_722, cifar_resnet_gmacs(3), "He et al. 2016, Sec. 4.2, n=3, no shortcuts"
    ),
    "plain32": Reference(
        464_154, cifar_resnet_gmacs(5), "He et al. 2016, Sec. 4.2, n=5, no shortcuts"
    ),
    "plain44": Reference(
        658_586, cifar_resnet_gmacs(7), "He et al. 2016, Sec. 4.2, n=7, no shortcuts"
    ),
    "plain56": Reference(
        853_018, cifar_resnet_gmacs(9), "He et al. 2016, Sec. 4.2, n=9, no shortcuts"
    ),
    "plain110": Reference(
        1_727_962, cifar_resnet_gmacs(18), "He et al. 2016, Sec. 4.2, n=18, no shortcuts"
    ),
    "resnext29_8x64d": Reference(
        34_426_698, paper_macs(resnext29_rows(8)), "Xie et al. 2017, Sec. 5.3, CIFAR-10"
    ),
    "resnext29_16x64d": Reference(
        68_155_210, paper_macs(resnext29_rows(16)), "Xie et al. 2017, Sec. 5.3, CIFAR-10"
    ),
    "densenet_bc_100_12": Reference(
        769_162,
        densenet_paper_gmacs((16, 16, 16), 12, 10, cifar=True),
        "Huang et al. 2017, Table 2, CIFAR-10 (L=100, k=12); GMACs: densenet_paper_gmacs",
    ),
}
