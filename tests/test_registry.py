"""The registry and calling contracts of docs/design.md: names, errors, model_info, input checks,
auxiliary outputs, and `python -m archs.summary --json`.

Everything here is abstract (shapes only, `nnx.eval_shape` / `jax.eval_shape`) except the
summary, which traces one small network.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import archs
from archs import summary
from archs.summary import abstract_model

# The model names of docs/models.md ("Which networks are whose"): torchvision 0.29's and timm
# 1.0's names, and the papers' own networks.
CONTRACT_NAMES = [
    *["alexnet", "googlenet", "inception_resnet_v2"],
    *[f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")],
    *[f"resnet{d}" for d in (18, 34, 50, 101, 152)],
    *["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "resnext101_32x4d"],
    *[f"densenet{d}" for d in (121, 161, 169, 201, 264)],
    *["seresnet50", "seresnet101", "seresnet152", "seresnext50_32x4d", "seresnext101_32x4d"],
    *["senet154", "alexnet_lrn", "alexnet_bn", "zfnet", "vgg11_lrn", "vgg16_c", "inception_v1"],
    *["plain18", "plain34"],
    *[f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)],
    *[f"plain{d}" for d in (20, 32, 44, 56, 110)],
    *["densenet_bc_100_12", "resnext29_8x64d", "resnext29_16x64d"],
]

SUMMARY_FIELDS = {
    "model",
    "params",
    "gmacs",
    "gflops",
    "image_size",
    "num_classes",
    "reference_params",
    "reference_gmacs",
    "reference_source",
}


def test_list_models_is_sorted_and_holds_the_contract_names():
    names = archs.list_models()
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    assert set(CONTRACT_NAMES) <= set(names), sorted(set(CONTRACT_NAMES) - set(names))


@pytest.mark.parametrize(
    ("typo", "suggestion"), [("resnet5", "resnet50"), ("densenet12", "densenet121")]
)
def test_unknown_name_suggests_close_matches(typo, suggestion):
    for call in (archs.create_model, archs.model_info):
        with pytest.raises(
            ValueError, match=f"unknown model '{typo}'; did you mean .*{suggestion}"
        ):
            call(typo)


def test_unknown_name_without_close_match_still_explains():
    with pytest.raises(ValueError, match=r"unknown model 'xyzzy' \(archs.list_models\(\)"):
        archs.create_model("xyzzy")


def test_unknown_override_lists_the_allowed_ones():
    with pytest.raises(ValueError) as err:
        archs.create_model("resnet50", width=3)
    message = str(err.value)
    assert "unknown override 'width' for model 'resnet50'; did you mean widths" in message
    for allowed in archs.model_overrides("resnet50"):
        assert allowed in message
    assert "shortcut" in message and "depths" in message  # the generic ResNet's overrides


@pytest.mark.parametrize("num_classes", [0, -3, 2.5])
def test_bad_num_classes_is_refused(num_classes):
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        archs.create_model("resnet20", num_classes=num_classes)


def test_model_info_fields():
    info = archs.model_info("resnet50")
    for field in (
        "image_size",
        "num_classes",
        "mean",
        "std",
        "crop_pct",
        "aux_weight",
        "family",
        "reference_params",
        "reference_gmacs",
        "reference_source",
    ):
        assert hasattr(info, field), field
    assert (info.image_size, info.num_classes, info.aux_weight) == (224, 1000, 0.0)
    assert len(info.mean) == len(info.std) == 3
    assert 0 < info.crop_pct <= 1
    assert info.reference_params == 25_557_032  # torchvision 0.29 resnet50
    assert "torchvision" in info.reference_source
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_classes = 10  # type: ignore[misc]
    assert archs.model_info("googlenet").aux_weight > 0  # a net with auxiliary heads


@pytest.mark.parametrize(
    "shape",
    [(32, 32, 3), (1, 32, 32, 1), (1, 3, 32, 32), (1, 32, 32, 3, 1)],
    ids=["rank3", "one-channel", "nchw", "rank5"],
)
def test_wrong_input_shape_says_what_was_expected(shape):
    model = abstract_model("resnet20")
    x = jnp.zeros(shape)
    with pytest.raises(ValueError, match=r"expects NHWC input of shape \(N, H, W, 3\)"):
        model(x)
    with pytest.raises(ValueError, match=r"got shape"):
        model.features(x)


def aux_shapes(name: str, train: bool, size: int) -> tuple:
    """Shapes of the aux outputs of `model(x, return_aux=True)`, traced abstractly."""
    graphdef, state = nnx.split(abstract_model(name))

    def run(state, x):
        model = nnx.merge(graphdef, state)
        model.train() if train else model.eval()
        return model(x, return_aux=True)

    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    logits, aux = jax.eval_shape(run, state, x)
    assert logits.shape == (2, archs.model_info(name).num_classes)
    return tuple(a.shape for a in aux)


@pytest.mark.parametrize("train", [True, False])
def test_return_aux_is_empty_without_aux_heads(train):
    assert aux_shapes("resnet20", train, 32) == ()


def test_return_aux_gives_aux_logits_in_train_mode_only():
    assert aux_shapes("googlenet", True, 224) == ((2, 1000), (2, 1000))
    assert aux_shapes("googlenet", False, 224) == ()


def test_summary_json(capsys):
    assert summary.main(["--json", "--models", "densenet_bc_100_12"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    row = rows[0]
    assert set(row) == SUMMARY_FIELDS
    assert row["model"] == "densenet_bc_100_12"
    assert row["params"] == row["reference_params"] == 769_162  # Huang et al. 2017, Table 2
    assert (row["image_size"], row["num_classes"]) == (32, 10)
    assert row["gmacs"] == pytest.approx(row["reference_gmacs"], rel=0.01)
    # XLA counts 2 flops per MAC plus the elementwise work (BatchNorm, ReLU, pooling).
    assert 2 * row["gmacs"] <= row["gflops"] < 2.5 * row["gmacs"]
    assert "Huang" in row["reference_source"]


def test_summary_refuses_unknown_models_in_one_line_before_tracing(capsys):
    assert summary.main(["--json", "--models", "resnet18", "resnet5"]) == 2
    out, err = capsys.readouterr()
    assert not out
    (line,) = err.strip().splitlines()
    assert line.startswith("summary: error: unknown model 'resnet5'; did you mean resnet56")
