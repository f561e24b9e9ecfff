"""Numerical parity with torchvision 0.29 / timm 1.0: same weights, same input, same logits.

Each reference model is built with random weights and random BatchNorm statistics and affine
parameters (so that BatchNorm matters), its state_dict is converted with archs.convert, and
both run on the same random batch; logits agree to a relative error (max|a-b| / max|b|) of
1e-4 in float32. Needs the `parity` extra; run from the repository root in a Python 3.11 venv
with `pip install -e '.[parity]'` and torch==2.14.1 torchvision==0.29.1:

    pytest -m parity tests/parity                 # every model (slow on 2 cores)
    pytest -m "parity and not slow" tests/parity  # one model per family: the CI subset
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install -e '.[parity]')")
timm = pytest.importorskip("timm", reason="parity tests need timm (pip install -e '.[parity]')")
torchvision = pytest.importorskip("torchvision", reason="parity tests need torchvision")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import archs  # noqa: E402
from archs import convert, layers, model_state, references  # noqa: E402

pytestmark = pytest.mark.parity

TOLERANCE = 1e-4
# One model per family runs by default; the rest are `slow` (minutes each on 2 cores).
FAST = {
    "alexnet",
    "vgg11_bn",
    "googlenet",
    "resnet18",
    "resnext50_32x4d",
    "densenet121",
    "seresnet50",
    "inception_resnet_v2",
}
# A second resolution per model (200 unless named here): not a multiple of 32, so that odd
# maps meet the strided convs' padding, ceil-mode pooling and the adaptive pooling bins.
OTHER_SIZE = {"inception_resnet_v2": 235, "alexnet": 195, "googlenet": 179}
TORCHVISION_KWARGS = {
    "googlenet": {"aux_logits": True, "transform_input": True, "init_weights": True}
}
OUR_OVERRIDES = {"googlenet": {"transform_input": True}}


def library_models() -> list[str]:
    return [
        name
        for name, ref in references.REFERENCES.items()
        if ref.source.startswith(("torchvision", "timm"))
    ]


def marked(names: list[str]) -> list:
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow, id=n) for n in names]


def torch_model(name: str, seed: int = 0) -> torch.nn.Module:
    """The reference model with random weights and random BatchNorm statistics."""
    torch.manual_seed(seed)
    if references.REFERENCES[name].source.startswith("torchvision"):
        kwargs = TORCHVISION_KWARGS.get(name, {})
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    else:
        model = timm.create_model(name, pretrained=False)
    randomize_batch_norm(model, archs.model_info(name).image_size)
    return model.eval()


def residual_branch_ends(model: torch.nn.Module) -> set[torch.nn.Module]:
    """The BatchNorm closing each residual branch (bn3 of a bottleneck, bn2 of a basic block)."""
    ends = set()
    for module in model.modules():
        kind = type(module).__name__
        if "Bottleneck" in kind and hasattr(module, "bn3"):
            ends.add(module.bn3)
        elif "BasicBlock" in kind and hasattr(module, "bn2"):
            ends.add(module.bn2)
    return ends


def randomize_batch_norm(model: torch.nn.Module, size: int) -> None:
    """Random affine parameters; running statistics measured on a random batch, then jittered.

    Arbitrary statistics (mean ~0, variance ~1 everywhere) let eval-mode activations grow by
    a constant factor per residual block, and the deep SE nets then amplify float32 rounding:
    so randomised, timm's SE-ResNet-101 in float32 differs from itself in float64 by 40%
    (max|a-b|/max|b|). Measured statistics keep activations at a trained net's scale, and so
    do small scales (0.1-0.3) on the BatchNorm closing each residual branch, as trained ResNets
    have: with scales of ~1 there, ResNet-152's float32 logits (torch's and ours alike) are
    2-3e-4 from float64, with 0.1-0.3 about 1e-6.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    ends = residual_branch_ends(model)
    with torch.no_grad():
        for norm in norms:
            low, high = (0.1, 0.3) if norm in ends else (0.5, 1.5)
            norm.weight.copy_(torch.empty(norm.num_features).uniform_(low, high))
            norm.bias.copy_(0.1 * torch.randn(norm.num_features))
            norm.momentum = 1.0  # running statistics := this batch's
        model.train()
        model(torch.randn(2, 3, size, size))
        for norm in norms:
            norm.momentum = 0.1
            n = norm.num_features
            norm.running_mean.add_(0.1 * norm.running_var.sqrt() * torch.randn(n))
            norm.running_var.mul_(torch.empty(n).uniform_(0.8, 1.25))


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def converted(name: str, reference: torch.nn.Module) -> nnx.Module:
    return convert.from_state_dict(name, state_dict_numpy(reference), **OUR_OVERRIDES.get(name, {}))


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@nnx.jit
def forward(model: nnx.Module, x: jax.Array) -> jax.Array:
    # One XLA computation compiles faster on CPU than a deep net's ops dispatched one by one.
    return model(x)


def run_both(model: nnx.Module, reference: torch.nn.Module, x: np.ndarray):
    with torch.no_grad():
        theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    return np.asarray(forward(model, jnp.asarray(x))), theirs.numpy()


def random_batch(size: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("name", marked(library_models()))
def test_eval_logits_match(name, record_property):
    reference = torch_model(name)
    reference64 = copy.deepcopy(reference).double()
    model = converted(name, reference)
    model.eval()
    default = archs.model_info(name).image_size
    for size in (default, OTHER_SIZE.get(name, 200)):
        x = random_batch(size)
        ours, theirs = run_both(model, reference, x)
        with torch.no_grad():
            exact = reference64(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64)))
        error = relative_error(ours, theirs)
        own_error = relative_error(theirs, exact.numpy())
        record_property(f"relative_error_{size}", error)
        print(f"{name} @{size}: relative error {error:.2e} (torch float32 vs 64: {own_error:.2e})")
        assert error < TOLERANCE, f"{name} at {size}: {error:.2e}"


def test_scanned_blocks_match():
    reference = torch_model("resnet50")
    model = convert.from_state_dict("resnet50", state_dict_numpy(reference), scan_blocks=True)
    ours, theirs = run_both(model, reference, random_batch(200))
    assert relative_error(ours, theirs) < TOLERANCE


@pytest.mark.parametrize("name", ["resnet50", "densenet121"])
def test_train_mode_outputs_match(name):
    reference = torch_model(name).train()
    model = converted(name, reference)
    model.train()
    ours, theirs = run_both(model, reference, random_batch(160, batch=2))
    error = relative_error(ours, theirs)
    print(f"{name} train mode: relative error {error:.2e}")
    assert error < TOLERANCE


def test_googlenet_aux_heads_match():
    reference = torch_model("googlenet")
    model = converted("googlenet", reference)
    model.eval()
    x = random_batch(224)
    captured = {}
    hooks = [
        getattr(reference, block).register_forward_hook(
            lambda _m, _i, out, block=block: captured.__setitem__(block, out)
        )
        for block in ("inception4a", "inception4d")
    ]
    run_both(model, reference, x)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        theirs = [reference.aux1(captured["inception4a"]), reference.aux2(captured["inception4d"])]
    ours = model.aux_logits(model.features(jnp.asarray(x)))
    assert len(ours) == 2
    for a, b in zip(ours, theirs, strict=True):
        assert relative_error(a, b.numpy()) < TOLERANCE


def test_squeeze_excite_matches_timm():
    torch.manual_seed(0)
    reference = timm.layers.SEModule(256, rd_ratio=1 / 16).eval()
    ours = layers.SqueezeExcite(256, 16, rngs=nnx.Rngs(0))
    convert.convert_state(ours, state_dict_numpy(reference), family="layers")
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 256)).astype(np.float32)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    error = relative_error(ours(jnp.asarray(x)), theirs.numpy().transpose(0, 2, 3, 1))
    assert error < 1e-6


def test_local_response_norm_matches_torch():
    reference = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    x = 30.0 * np.random.default_rng(0).normal(size=(2, 5, 5, 16)).astype(np.float32)
    theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    ours = np.asarray(layers.LocalResponseNorm()(jnp.asarray(x)))
    assert relative_error(ours, theirs.transpose(0, 2, 3, 1)) < 1e-6
    # Normalisation is not negligible at this scale: the test can tell LRN from identity.
    assert relative_error(x, theirs.transpose(0, 2, 3, 1)) > 1e-2


def test_converted_resnet50_checkpoint_evaluates(tmp_path):
    reference = torch_model("resnet50")
    pth = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), pth)
    out = tmp_path / "converted"
    assert convert.main(["--model", "resnet50", "--from", str(pth), "--out", str(out)]) == 0
    model = model_state.restore_state(archs.create_model("resnet50", rngs=nnx.Rngs(1)), out)
    model.eval()
    ours, theirs = run_both(model, reference, random_batch(128, batch=2))
    assert relative_error(ours, theirs) < TOLERANCE


def test_converted_resnet50_evaluates_through_the_training_eval_path(tmp_path):
    """`init_from` + `eval_only` on (mock) ImageNet validation images: the eval line's loss and
    top-1 are torch's on the same preprocessed images."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from training_support import mock_datasets

    from archs.training import EVALUATED, base_config, data, train_and_evaluate

    reference = torch_model("resnet50")
    pth = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), pth)
    out = tmp_path / "converted"
    assert convert.main(["--model", "resnet50", "--from", str(pth), "--out", str(out)]) == 0
    config = base_config()
    config.update(
        model="resnet50",
        dataset="imagenet2012",
        eval_split="validation",
        data_dir="/nonexistent/tfds",
        batch_size=8,
        eval_only=True,
        init_from=str(out),
    )
    info = archs.model_info("resnet50")
    with mock_datasets():
        assert train_and_evaluate(config, str(tmp_path / "eval")) == EVALUATED
        source = data.open_source(config)
        batches = data.EvalData(source, 8, data.make_preprocess(config, info, source)).batches()
        logits, labels = [], []
        for batch in batches:
            x = (batch["image"][batch["mask"]] / 255.0 - np.array(info.mean)) / np.array(info.std)
            with torch.no_grad():
                nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))
                logits.append(reference(nchw).numpy())
            labels.append(batch["label"][batch["mask"]])
    logits, labels = np.concatenate(logits).astype(np.float64), np.concatenate(labels)
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    loss = -log_probs[np.arange(len(labels)), labels].mean()
    top1 = (logits.argmax(1) == labels).mean()
    (line,) = [
        json.loads(s) for s in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()
    ]
    assert line["eval/loss"] == pytest.approx(loss, rel=1e-4)
    assert line["eval/top1"] == pytest.approx(top1)


def test_load_pretrained_new_head_keeps_the_body(tmp_path):
    reference = torch_model("resnet18")
    pth = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), pth)
    model = archs.load_pretrained("resnet18", pth, num_classes=10)
    assert model.fc.kernel.shape == (512, 10)
    reference.fc = torch.nn.Identity()
    x = random_batch(64)
    _, pre_logits = run_both(model, reference, x)
    ours = model.features(jnp.asarray(x))["pre_logits"]
    assert relative_error(ours, pre_logits) < TOLERANCE


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"model": {"fc.weight": 1}}, "not a flat dict of tensors"),
        ([1, 2], "not a state_dict"),
    ],
)
def test_pth_that_is_not_a_state_dict_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    torch.save(content, path)
    with pytest.raises(convert.ConversionError, match=message):
        convert.read_checkpoint(path)


def test_pickled_module_is_refused_without_running_it(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(convert.ConversionError, match="cannot read"):
        convert.read_checkpoint(path)
