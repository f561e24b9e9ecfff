"""Benchmark scripts (their --json output on tiny sizes) and the training options they
measure (`profile_steps` writes a trace).

Tiny models are resnet20's CIFAR layout with fewer blocks (`depths` override), so every compile
here takes seconds.
"""

from __future__ import annotations

import json
import os
from unittest import mock

import jax
import pytest
import tensorflow_datasets as tfds

from archs.summary import abstract_model, xla_gflops
from archs.training import dali
from archs.training.config import base_config, check_config
from archs.training.errors import ConfigError
from benchmarks import compile as compile_bench
from benchmarks import depth, flax_example, input_pipeline, scaling, train_step

TINY = '{"depths":[1,2,2]}'  # no spaces: argv strings below are split on spaces
TINY_SCANNED = '{"depths":[1,2,2],"scan_blocks":true}'
FLAX_DIR = os.environ.get("FLAX_EXAMPLE_DIR", "/tmp/flaxex")


def run_json(main, argv: str | list[str], capsys) -> dict:
    """main's --json output; a str argv is split on spaces."""
    argv = argv.split() if isinstance(argv, str) else argv
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_train_step_json_has_the_contract_fields(capsys):
    out = run_json(
        train_step.main,
        f"--model resnet20 --model-kwargs {TINY} --batch-size 2 --image-size 8 --steps 2 "
        "--peak-size 128",
        capsys,
    )
    for key in ("compile_s", "step_ms", "images_per_sec", "peak_gflops", "mfu"):
        assert out[key] > 0, key
    assert out["devices"] == jax.device_count()
    assert out["device_kind"] == jax.devices()[0].device_kind
    assert out["images_per_sec"] == pytest.approx(2 / (out["step_ms"] / 1e3), rel=1e-3)
    # A train step is about 3 forward passes (the backward pass's two convolutions per forward
    # one), plus BatchNorm and the update. Both counts are XLA's, which leaves out the padding.
    forward_gflops = xla_gflops(abstract_model("resnet20", depths=(1, 2, 2)), 8)
    assert 2.5 * forward_gflops < out["train_gflops_per_image"] < 4.5 * forward_gflops


@pytest.mark.slow
def test_depth_json_has_a_row_per_form(capsys):
    out = run_json(
        depth.main,
        f"--models resnet20 --model-kwargs {TINY} --batch-size 2 --image-size 8 --steps 1 "
        "--series-model resnet20 --series-batches 2",
        capsys,
    )
    assert out["backend"] == jax.default_backend()
    rows = out["depth"]
    default = "barrier" if jax.default_backend() == "cpu" else "unrolled"
    assert [r["form"] for r in rows] == [*depth.FORMS, f"default ({default})"]
    for row in rows:
        assert row["layers"] == 12  # stem, 5 blocks of 2 convolutions, fc
        for key in ("train_gflops_per_image", "compile_s", "step_ms", "ms_per_gflop"):
            assert row[key] > 0, key
        assert row["ms_per_layer"] == pytest.approx(row["step_ms"] / 12, rel=1e-2)
        assert row["images_per_sec"] == pytest.approx(2e3 / row["step_ms"], rel=1e-2)
        assert row["cost_vs_first"] == 1
    assert len({r["train_gflops_per_image"] for r in rows}) == 1  # counted unrolled
    assert [r["batch_size"] for r in out["batch"]] == [2] * 4
    assert all(r["ms_per_image"] > 0 for r in out["batch"])


def test_train_step_refuses_a_bad_override(capsys):
    with pytest.raises(SystemExit):
        train_step.main(["--model", "resnet20", "--model-kwargs", '{"remat": "yes"}'])
    assert "remat must be True or False, got 'yes'" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_json(capsys):
    out = run_json(
        compile_bench.main,
        f"--models resnet20 --variants {TINY_SCANNED} --batch-size 1 --image-size 8",
        capsys,
    )
    assert [r["model_kwargs"] for r in out["rows"]] == [json.loads(TINY_SCANNED)]
    for row in out["rows"]:
        parts = row["build_s"] + row["lower_s"] + row["compile_s"] + row["first_step_s"]
        assert row["time_to_first_step_s"] == pytest.approx(parts, abs=0.01)
        assert row["compile_s"] > 0 and row["peak_memory_mb"] > 0


@pytest.mark.slow
def test_scaling_json(capsys):
    out = run_json(
        scaling.main,
        f"--model resnet20 --model-kwargs {TINY} --per-device-batch 2 --image-size 8 --steps 1 "
        "--peak-size 128",
        capsys,
    )
    assert [r["devices"] for r in out["rows"]] == scaling.device_counts(jax.device_count())
    assert out["rows"][0]["scaling_efficiency"] == 1.0


def test_device_counts_are_powers_of_two_then_all():
    assert scaling.device_counts(1) == [1]
    assert scaling.device_counts(6) == [1, 2, 4, 6]
    assert scaling.device_counts(8) == [1, 2, 4, 8]


@pytest.fixture
def keep_affinity():
    """--cores pins the whole process: give the other tests their cores back."""
    cores = os.sched_getaffinity(0)
    yield
    os.sched_setaffinity(0, cores)


@pytest.mark.slow
def test_input_pipeline_json(capsys, keep_affinity):
    """CIFAR on tfds mock data (mocked datasets call themselves unprepared), and the
    ImageNet-style pipelines over synthetic JPEGs (DALI where it is installed)."""
    args = ["--batch-size", "8", "--batches", "2", "--cores", "1", "--pipelines"]
    with (
        tfds.testing.mock_data(num_examples=64),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
    ):
        rows = run_json(input_pipeline.main, [*args, "memory"], capsys)["rows"]
    imagenet = ["stream", "stream_roi"] + (["dali"] if dali.nvdali is not None else [])
    rows += run_json(input_pipeline.main, [*args, *imagenet], capsys)["rows"]
    assert [r["pipeline"] for r in rows] == ["memory", *imagenet]
    assert [r["data_pipeline"] for r in rows] == ["memory", "stream", "stream", "dali"][: len(rows)]
    for row in rows:
        assert row["cores"] == 1 and row["decode"] == "cpu"
        assert row["images_per_sec_per_core"] == pytest.approx(row["images_per_sec"], rel=0.01)


@pytest.mark.slow
def test_input_pipeline_end_to_end_json(capsys, keep_affinity):
    """A tiny model trained from each ImageNet-style pipeline, beside synthetic data."""
    out = run_json(
        input_pipeline.main,
        f"--end-to-end resnet20 --model-kwargs {TINY} --image-size 32 --batch-size 4 "
        "--batches 2 --dtype float32 --pipelines stream stream_roi",
        capsys,
    )["end_to_end"]
    assert (out["model"], out["image_size"], out["steps"]) == ("resnet20", 32, 2)
    assert [r["pipeline"] for r in out["rows"]] == ["stream", "stream_roi"]
    for row in out["rows"]:
        ratio = row["end_to_end_images_per_sec"] / row["synthetic_images_per_sec"]
        assert row["ratio"] == pytest.approx(ratio, rel=0.01)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FLAX_DIR), reason=f"no flax example at {FLAX_DIR}")
def test_flax_example_json(capsys):
    out = run_json(
        flax_example.main,
        f"--flax-dir {FLAX_DIR} --models resnet18 --batch-size 2 --image-size 32 --rounds 1 "
        "--steps 1 --peak-size 128",
        capsys,
    )
    result = out["models"]["resnet18"]
    assert result["ratio"] == pytest.approx(
        result["ours"]["images_per_sec"] / result["flax"]["images_per_sec"], rel=0.01
    )
    # The same network: XLA's FLOPs per training image agree to a few percent.
    assert result["ours"]["train_gflops_per_image"] == pytest.approx(
        result["flax"]["train_gflops_per_image"], rel=0.1
    )


def test_flax_dir_without_the_example_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        flax_example.main(["--flax-dir", str(tmp_path)])
    assert "models.py and train.py" in capsys.readouterr().err


# ----- training options ----------------------------------------------------------------------


def test_profile_steps_must_not_be_negative():
    config = base_config()
    config.profile_steps = -1
    with pytest.raises(ConfigError, match="profile_steps"):
        check_config(config)
