"""Reference parameter counts and GMACs of the torchvision/timm models in archs/references.py.

Run in the parity environment (a Python 3.11 venv with `pip install -e '.[parity]'` and
torch==2.14.1 torchvision==0.29.1) from the repository root:

    python -m benchmarks.reference_figures [--models resnet50 ...]

Prints one JSON object, name -> {"params", "gmacs"}: `params` is the sum of `p.numel()` over
the reference model's parameters (BatchNorm running statistics are buffers, so excluded);
`gmacs` is `torch.utils.flop_counter.FlopCounterMode`'s FLOPs (convolutions and matrix
products) for one image at the model's default resolution in eval mode, halved, in billions.
Models are built on the meta device, so nothing is allocated and the run takes seconds.
GoogLeNet is built with its auxiliary heads (their parameters count, as in references.py;
in eval mode they do not run, so they add no MACs).

`--state-shapes` prints instead name -> {state_dict key: shape} of the reference checkpoint
layout: the fixture tests/data/reference_state_shapes.json that tests/test_convert.py maps
without torch.
"""

from __future__ import annotations

import argparse
import json

import timm
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from archs import references

# Builder arguments that make the reference model match what references.py counts.
TORCHVISION_KWARGS = {"googlenet": {"aux_logits": True, "init_weights": False}}
IMAGE_SIZES = {"inception_resnet_v2": 299}


def reference_model(name: str) -> torch.nn.Module:
    """The torchvision or timm model that references.py cites for `name`, in eval mode."""
    source = references.REFERENCES[name].source
    if source.startswith("torchvision"):
        kwargs = TORCHVISION_KWARGS.get(name, {})
        return torchvision.models.get_model(name, weights=None, **kwargs).eval()
    return timm.create_model(name, pretrained=False).eval()


def figures(name: str) -> dict[str, float]:
    """Parameter count and GMACs of one reference model."""
    size = IMAGE_SIZES.get(name, 224)
    with torch.device("meta"):
        model = reference_model(name)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.empty(1, 3, size, size))
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "gmacs": counter.get_total_flops() / 2e9,
    }


def state_shapes(name: str) -> dict[str, list[int]]:
    """The reference checkpoint's keys and tensor shapes (num_batches_tracked included)."""
    with torch.device("meta"):
        model = reference_model(name)
    return {key: list(value.shape) for key, value in model.state_dict().items()}


def library_models() -> list[str]:
    """Models whose reference is a torchvision or timm implementation."""
    return [
        name
        for name, ref in references.REFERENCES.items()
        if ref.source.startswith(("torchvision", "timm"))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="default: all of them")
    parser.add_argument("--state-shapes", action="store_true", help="checkpoint layouts instead")
    args = parser.parse_args()
    names = args.models or library_models()
    measure = state_shapes if args.state_shapes else figures
    print(json.dumps({name: measure(name) for name in names}, indent=1))


if __name__ == "__main__":
    main()
