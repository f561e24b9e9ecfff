"""benchmarks.torchvision_step, the PyTorch side of the speed comparison: it runs a real
torchvision train step and reports train_step's fields. Needs the `parity` extra (see
test_parity.py); `pytest -m parity tests/parity/test_torchvision_step.py`."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch", reason="the torchvision benchmark needs torch (the parity extra)")
pytest.importorskip("torchvision", reason="the torchvision benchmark needs torchvision")

from benchmarks import torchvision_step

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reports_a_timed_step(capsys, dtype):
    argv = ["--model", "resnet18", "--batch-size", "2", "--image-size", "32", "--dtype", dtype]
    assert torchvision_step.main([*argv, "--steps", "2", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "resnet18" and result["dtype"] == dtype
    assert result["steps"] == 2
    assert 0 < result["step_ms_min"] <= result["step_ms"] <= result["step_ms_max"]
    assert result["images_per_sec"] == pytest.approx(2 / (result["step_ms"] / 1e3), rel=1e-3)


def test_the_step_trains_the_model():
    import torch

    model, step = torchvision_step.make_step(
        "resnet18",
        batch_size=2,
        image_size=32,
        dtype="float32",
        channels_last=True,
        compile_model=False,
        device=torch.device("cpu"),
    )
    weights = model.conv1.weight.detach().clone()
    step()
    assert not torch.equal(weights, model.conv1.weight)


def test_unknown_model_is_refused(capsys):
    with pytest.raises(SystemExit):
        torchvision_step.main(["--model", "resnet_nope"])
    assert "'resnet_nope' is not a torchvision.models builder" in capsys.readouterr().err
