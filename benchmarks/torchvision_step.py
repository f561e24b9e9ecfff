"""The torchvision train step on PyTorch, timed as `benchmarks.train_step` times ours.

`python -m benchmarks.torchvision_step --model resnet50 --batch-size 256 --dtype bfloat16 --json`
runs in an environment with torch and torchvision (the parity extra). The step matches ours:
the torchvision model (random initialization), one synthetic uint8 batch already on the device,
normalized inside the step, cross-entropy, SGD with Nesterov momentum 0.9 and weight decay 1e-4.
`--dtype bfloat16` runs the forward pass under `torch.autocast` (parameters stay float32, as ours
do); `--channels-last` stores activations NHWC (the layout cuDNN's tensor-core kernels prefer);
`--compile` wraps the model in `torch.compile`. Each step is waited for (`synchronize`) and timed;
`step_ms` is the median after `--warmup` untimed steps, `images_per_sec` the batch over it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchvision

DTYPES = {"float32": None, "bfloat16": torch.bfloat16}
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def make_step(
    name: str,
    *,
    batch_size: int,
    image_size: int,
    dtype: str,
    channels_last: bool,
    compile_model: bool,
    device: torch.device,
) -> tuple[torch.nn.Module, Callable[[], None]]:
    """torchvision's `name` (random initialization) and one train step of it on a fixed
    synthetic batch."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = getattr(torchvision.models, name)(weights=None).to(device, memory_format=memory_format)
    model.train()
    forward = torch.compile(model) if compile_model else model
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    rng = np.random.default_rng(0)
    images = torch.from_numpy(
        rng.integers(0, 256, (batch_size, 3, image_size, image_size), np.uint8)
    ).to(device)
    labels = torch.from_numpy(rng.integers(0, 1000, (batch_size,), np.int64)).to(device)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    autocast = DTYPES[dtype]

    def step() -> None:
        x = ((images.float() - mean) / std).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = torch.nn.functional.cross_entropy(forward(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step


def benchmark(name: str, *, steps: int, warmup: int, **settings: Any) -> dict[str, Any]:
    """Time `steps` train steps of torchvision's `name` built with `make_step`'s `settings`;
    the fields of the result object."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _, step = make_step(name, device=device, **settings)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return {
        "model": name,
        **settings,
        "steps": steps,
        "step_ms": round(step_s * 1e3, 3),
        "images_per_sec": round(settings["batch_size"] / step_s, 3),
        "step_ms_min": round(min(times) * 1e3, 3),
        "step_ms_max": round(max(times) * 1e3, 3),
        "device_kind": device_kind(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a torchvision.models builder name")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not callable(getattr(torchvision.models, args.model, None)):
        parser.error(f"--model {args.model!r} is not a torchvision.models builder")
    result = benchmark(
        args.model,
        batch_size=args.batch_size,
        image_size=args.image_size,
        dtype=args.dtype,
        channels_last=args.channels_last,
        compile_model=args.compile,
        steps=args.steps,
        warmup=args.warmup,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(f"{k:>16}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
