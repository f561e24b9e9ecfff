"""archs.convert without torch: layouts, key mapping, errors, checkpoint files, the CLI; and
archs.model_state, the model-state files convert writes and training reads.

Reference checkpoint layouts come from tests/data/reference_state_shapes.json, written by
`python -m benchmarks.reference_figures --state-shapes --models ...` from torchvision 0.29.1 /
timm 1.0.31 (the keys and tensor shapes of each model's `state_dict()`). Numerical agreement
with the torch models themselves is tests/parity/.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

import archs
from archs import convert, layers, model_state
from archs.summary import abstract_model

REFERENCE_SHAPES = json.loads(
    (pathlib.Path(__file__).parent / "data" / "reference_state_shapes.json").read_text()
)


class Tiny(nnx.Module):
    """A grouped, strided conv with bias, a BatchNorm, a dense head: each layout once."""

    def __init__(self, rngs: nnx.Rngs, num_classes: int = 5):
        self.features = nnx.List([layers.conv2d(4, 6, 3, stride=2, groups=2, bias=True, rngs=rngs)])
        self.bn1 = layers.batch_norm(6, rngs=rngs)
        self.fc = layers.linear(6, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.features[0](x)))
        return self.fc(x.mean(axis=(1, 2)))


def tiny_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in torch layouts, as nn.Conv2d(4, 6, 3, 2, 1, groups=2) etc. hold them."""
    rng = np.random.default_rng(seed)
    return {
        "features.0.weight": rng.normal(size=(6, 2, 3, 3)).astype(np.float32),
        "features.0.bias": rng.normal(size=(6,)).astype(np.float32),
        "bn1.weight": rng.uniform(0.5, 1.5, size=(6,)).astype(np.float32),
        "bn1.bias": rng.normal(size=(6,)).astype(np.float32),
        "bn1.running_mean": rng.normal(size=(6,)).astype(np.float32),
        "bn1.running_var": rng.uniform(0.5, 2.0, size=(6,)).astype(np.float32),
        "bn1.num_batches_tracked": np.array(7, dtype=np.int64),
        "fc.weight": rng.normal(size=(5, 6)).astype(np.float32),
        "fc.bias": rng.normal(size=(5,)).astype(np.float32),
    }


def torch_reference_forward(sd: dict[str, np.ndarray], x_nchw: np.ndarray) -> np.ndarray:
    """The Tiny net computed straight from torch-layout weights, with explicit loops."""
    w, b = sd["features.0.weight"], sd["features.0.bias"]
    n, _, h, wd = x_nchw.shape
    xp = np.pad(x_nchw, ((0, 0), (0, 0), (1, 1), (1, 1)))
    oh, ow = (h + 2 - 3) // 2 + 1, (wd + 2 - 3) // 2 + 1
    out = np.zeros((n, 6, oh, ow))
    for o in range(6):
        g = o // 3  # 6 outputs in 2 groups of 3; each group sees 2 of the 4 inputs
        for y in range(oh):
            for z in range(ow):
                patch = xp[:, 2 * g : 2 * g + 2, 2 * y : 2 * y + 3, 2 * z : 2 * z + 3]
                out[:, o, y, z] = (patch * w[o]).sum(axis=(1, 2, 3)) + b[o]
    bn = (out - sd["bn1.running_mean"][:, None, None]) / np.sqrt(
        sd["bn1.running_var"][:, None, None] + 1e-5
    ) * sd["bn1.weight"][:, None, None] + sd["bn1.bias"][:, None, None]
    pooled = np.maximum(bn, 0).mean(axis=(2, 3))
    return pooled @ sd["fc.weight"].T + sd["fc.bias"]


def load_tiny(sd: dict[str, np.ndarray], **kwargs) -> Tiny:
    model = Tiny(nnx.Rngs(0))
    convert.convert_state(model, convert.normalize_keys(sd), family="tiny", **kwargs)
    return model


def test_converted_tiny_net_computes_the_torch_function():
    sd = tiny_state_dict()
    model = load_tiny(sd)
    model.eval()
    x = np.random.default_rng(1).normal(size=(2, 4, 7, 7)).astype(np.float32)
    ours = np.asarray(model(jnp.asarray(x.transpose(0, 2, 3, 1))))
    np.testing.assert_allclose(ours, torch_reference_forward(sd, x), rtol=1e-5, atol=1e-5)


def test_layouts_land_where_expected():
    sd = tiny_state_dict()
    model = load_tiny(sd)
    kernel = np.asarray(model.features[0].kernel[...])
    assert kernel.shape == (3, 3, 2, 6)
    assert kernel[2, 0, 1, 4] == sd["features.0.weight"][4, 1, 2, 0]
    np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), sd["fc.weight"].T)
    np.testing.assert_array_equal(np.asarray(model.bn1.var[...]), sd["bn1.running_var"])
    np.testing.assert_array_equal(np.asarray(model.bn1.scale[...]), sd["bn1.weight"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("bn1.running_var"), "no key 'bn1.running_var'"),
        (lambda sd: sd.update({"fc2.weight": np.zeros(3)}), "key 'fc2.weight' matches nothing"),
        (
            lambda sd: sd.update({"features.0.weight": np.zeros((6, 4, 3, 3), np.float32)}),
            "'features.0.weight' has shape (6, 4, 3, 3), the model's features/0/kernel needs "
            "(6, 2, 3, 3)",
        ),
    ],
)
def test_mismatches_are_one_line_errors_naming_the_key(edit, message):
    sd = tiny_state_dict()
    edit(sd)
    with pytest.raises(convert.ConversionError) as err:
        load_tiny(sd)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_head_of_another_size_kept_fresh_only_when_asked():
    sd = tiny_state_dict()
    sd["fc.weight"], sd["fc.bias"] = sd["fc.weight"][:3], sd["fc.bias"][:3]
    head = {"fc/kernel", "fc/bias"}
    with pytest.raises(convert.ConversionError, match="pass num_classes="):
        load_tiny(sd, head=head)
    model = load_tiny(sd, head=head, keep_fresh_head=True)
    fresh = Tiny(nnx.Rngs(0))
    np.testing.assert_array_equal(model.fc.kernel[...], fresh.fc.kernel[...])
    np.testing.assert_array_equal(model.bn1.mean[...], sd["bn1.running_mean"])


def test_normalize_keys_drops_counters_and_prefixes_and_renames_old_densenet_keys():
    sd = {
        "module.features.denseblock1.denselayer1.norm.1.weight": np.ones(2),
        "features.denseblock1.denselayer12.conv.2.weight": np.ones(2),
        "features.norm5.running_var": np.ones(2),
        "features.norm0.num_batches_tracked": np.array(3),
    }
    assert sorted(convert.normalize_keys(sd)) == [
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock1.denselayer12.conv2.weight",
        "features.norm5.running_var",
    ]


def test_variable_without_torch_counterpart_is_refused():
    class WithScale(Tiny):
        def __init__(self, rngs: nnx.Rngs):
            super().__init__(rngs)
            self.gamma = nnx.Param(jnp.ones(3))

    with pytest.raises(convert.ConversionError, match="our variable gamma has no torch"):
        convert.torch_layout(WithScale(nnx.Rngs(0)), "tiny")


def test_safetensors_file_round_trip(tmp_path):
    sd = tiny_state_dict()
    path = tmp_path / "tiny.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    loaded = convert.read_checkpoint(path)
    assert "bn1.num_batches_tracked" not in loaded
    np.testing.assert_array_equal(loaded["features.0.weight"], sd["features.0.weight"])


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(convert.ConversionError, match="does not exist"):
        convert.read_checkpoint(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(convert.ConversionError, match="cannot read"):
        convert.read_checkpoint(bad)


def test_pth_without_torch_says_what_to_do(tmp_path):
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed; tests/parity reads .pth files")
    path = tmp_path / "model.pth"
    path.write_bytes(b"")
    with pytest.raises(convert.ConversionError, match=r"needs torch .* \.safetensors"):
        convert.read_checkpoint(path)


def test_orbax_state_round_trip(tmp_path):
    model = load_tiny(tiny_state_dict())
    out = model_state.save_state(model, tmp_path / "ckpt")
    restored = model_state.restore_state(Tiny(nnx.Rngs(1)), out)
    for a, b in zip(
        jax.tree.leaves(nnx.state(model, (nnx.Param, nnx.BatchStat))),
        jax.tree.leaves(nnx.state(restored, (nnx.Param, nnx.BatchStat))),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(model_state.StateError, match="already exists"):
        model_state.save_state(model, out)


def reference_layout(name: str) -> dict[str, tuple[int, ...]]:
    return {
        key: tuple(shape)
        for key, shape in REFERENCE_SHAPES[name].items()
        if not key.endswith("num_batches_tracked")
    }


@pytest.mark.parametrize("name", sorted(REFERENCE_SHAPES))
def test_layout_maps_exactly_the_reference_checkpoint(name):
    if name not in archs.list_models():
        pytest.skip(f"{name} is not registered yet")
    model = abstract_model(name)
    layout = convert.torch_layout(model, archs.model_info(name).family)
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    ours = {
        key: src.torch_shape(flat[path].shape) for path, src in layout.items() for key in src.keys
    }
    theirs = reference_layout(name)
    assert sorted(set(ours) ^ set(theirs))[:5] == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}


def test_head_is_the_classifier_and_aux_classifiers():
    # torchvision's GoogLeNet: `fc`, and `aux1.fc2` / `aux2.fc2` of its auxiliary heads.
    head = model_state.head_keys(
        abstract_model("googlenet"), abstract_model("googlenet", num_classes=7)
    )
    assert sorted(head) == [
        "aux1/fc2/bias",
        "aux1/fc2/kernel",
        "aux2/fc2/bias",
        "aux2/fc2/kernel",
        "fc/bias",
        "fc/kernel",
    ]


@pytest.mark.slow
def test_cli_converts_and_the_result_restores(tmp_path, capsys):
    # A torchvision-layout GoogLeNet checkpoint with random values, written without torch.
    rng = np.random.default_rng(0)
    model = abstract_model("googlenet")
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    sd = {
        key: rng.normal(size=src.torch_shape(flat[path].shape)).astype(np.float32)
        for path, src in convert.torch_layout(model, "googlenet").items()
        for key in src.keys
    }
    sd["conv1.bn.num_batches_tracked"] = np.array(5, np.int64)
    path = tmp_path / "googlenet.safetensors"
    save_file(sd, str(path))
    out = tmp_path / "converted"
    args = ["--model", "googlenet", "--from", str(path), "--out", str(out), "--num-classes", "10"]
    assert convert.main(args) == 0
    assert "wrote googlenet" in capsys.readouterr().out

    restored = model_state.restore_state(abstract_model("googlenet", num_classes=10), out)
    weight = sd["inception4a.branch2.1.conv.weight"]
    kernel = restored.inception4a.branch2[1].conv.kernel[...]
    np.testing.assert_array_equal(kernel, weight.transpose(2, 3, 1, 0))
    assert restored.fc.kernel.shape == (1024, 10)
    loaded = archs.load_pretrained("googlenet", path, num_classes=10)
    for a, b in zip(
        jax.tree.leaves(nnx.state(restored, (nnx.Param, nnx.BatchStat))),
        jax.tree.leaves(nnx.state(loaded, (nnx.Param, nnx.BatchStat))),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)

    assert convert.main(args) == 2  # the directory exists now
    assert "already exists" in capsys.readouterr().err
    assert convert.main(["--model", "googlenett", "--from", str(path), "--out", "x"]) == 2
    assert "did you mean googlenet" in capsys.readouterr().err


def test_scanned_blocks_load_stacked_in_block_order():
    # ResNeXt-50's layer3 has 6 blocks: with scan_blocks, layer3.1 stacks torch's layer3.1-5.
    rng = np.random.default_rng(0)
    sd = {
        key: rng.normal(size=shape).astype(np.float32)
        for key, shape in reference_layout("resnext50_32x4d").items()
    }
    model = abstract_model("resnext50_32x4d", scan_blocks=True)
    convert.convert_state(model, sd, family="resnext")
    kernel = np.asarray(model.layer3[1].conv2.kernel[...])
    assert kernel.shape == (5, 3, 3, 16, 512)  # grouped: I = 512 / 32
    for k in range(5):
        weight = sd[f"layer3.{k + 1}.conv2.weight"]
        np.testing.assert_array_equal(kernel[k], weight.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.layer3[1].bn3.var[...][4], sd["layer3.5.bn3.running_var"])
    first = sd["layer3.0.conv1.weight"][:, :, 0, 0]
    np.testing.assert_array_equal(model.layer3[0].conv1.kernel[...][0, 0], first.T)


def test_model_state_reads_what_it_writes_under_one_key_spelling(tmp_path):
    model = load_tiny(tiny_state_dict())
    out = model_state.save_state(model, tmp_path / "ckpt")
    read = model_state.read_model_state(out)
    written = model_state.flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    assert set(written) == {
        "features/0/kernel",
        "features/0/bias",
        "bn1/scale",
        "bn1/bias",
        "bn1/mean",
        "bn1/var",
        "fc/kernel",
        "fc/bias",
    }
    assert set(written) <= set(read)  # read also holds the RNG state
    for name, value in written.items():
        np.testing.assert_array_equal(read[name], value, err_msg=name)


def test_load_into_leaves_the_head_of_another_size_fresh(tmp_path):
    source = model_state.flat_state(nnx.state(load_tiny(tiny_state_dict())))
    model = Tiny(nnx.Rngs(1), num_classes=3)
    head = model_state.head_keys(model, Tiny(nnx.Rngs(1), num_classes=4))
    assert head == {"fc/kernel", "fc/bias"}
    fresh_kernel = np.asarray(model.fc.kernel[...])
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    assert sorted(model_state.load_into(source, state)) == sorted(head)
    nnx.update(model, state)
    np.testing.assert_array_equal(model.fc.kernel[...], fresh_kernel)
    np.testing.assert_array_equal(model.bn1.var[...], source["bn1/var"])
