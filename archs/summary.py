"""Params, GMACs and XLA GFLOPs of every model against its reference: `python -m archs.summary`.

Counting is abstract (no parameter is allocated): parameters from `nnx.eval_shape`, MACs by
walking the forward pass's jaxpr and adding up every convolution and dot product, the same set
of operations PyTorch's FlopCounterMode counts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable

import jax
import jax.numpy as jnp
from flax import nnx

from archs import registry
from archs.cli_errors import ExitCode, first_line


def abstract_model(name: str, **overrides) -> nnx.Module:
    """The model with ShapeDtypeStruct leaves instead of arrays."""
    return nnx.eval_shape(lambda: registry.create_model(name, **overrides))


def count_params(model: nnx.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are not nnx.Param, so excluded)."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _jaxpr_macs(jaxpr: jax.extend.core.Jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval
            out = eqn.outvars[0].aval
            out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += math.prod(out.shape) * (math.prod(rhs.shape) // out_features)
        elif name == "dot_general":
            (contract_lhs, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            out = eqn.outvars[0].aval
            total += math.prod(out.shape) * math.prod(lhs.shape[i] for i in contract_lhs)
        repeat = eqn.params.get("length", 1) if name == "scan" else 1
        for sub in _sub_jaxprs(eqn.params.values()):
            total += repeat * _jaxpr_macs(sub)
    return total


def _sub_jaxprs(values: Iterable) -> Iterable[jax.extend.core.Jaxpr]:
    for value in values:
        if isinstance(value, jax.extend.core.ClosedJaxpr):
            yield value.jaxpr
        elif isinstance(value, jax.extend.core.Jaxpr):
            yield value
        elif isinstance(value, tuple | list):
            yield from _sub_jaxprs(value)


def count_macs(model: nnx.Module, image_size: int, batch: int = 1) -> int:
    """Conv + dense multiply-accumulates of an eval-mode forward pass at `image_size`."""
    graphdef, state = nnx.split(model)

    def forward(state, x):
        net = nnx.merge(graphdef, state)
        net.eval()
        return net(x)

    x = jax.ShapeDtypeStruct((batch, image_size, image_size, model.in_channels), jnp.float32)
    return _jaxpr_macs(jax.make_jaxpr(forward)(state, x).jaxpr)


def xla_gflops(model: nnx.Module, image_size: int) -> float:
    """XLA's cost analysis of the whole eval-mode forward pass (all ops, 2 per MAC); a loop's
    body counts once."""
    graphdef, state = nnx.split(model)

    def forward(state, x):
        net = nnx.merge(graphdef, state)
        net.eval()
        return net(x)

    x = jax.ShapeDtypeStruct((1, image_size, image_size, model.in_channels), jnp.float32)
    cost = jax.jit(forward).lower(state, x).cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    return float(cost.get("flops", float("nan"))) / 1e9


def summarize(name: str, with_xla: bool = True) -> dict:
    """One model's row of the summary."""
    info = registry.model_info(name)
    model = abstract_model(name)
    return {
        "model": name,
        "params": count_params(model),
        "gmacs": count_macs(model, info.image_size) / 1e9,
        "gflops": xla_gflops(model, info.image_size) if with_xla else None,
        "image_size": info.image_size,
        "num_classes": info.num_classes,
        "reference_params": info.reference_params,
        "reference_gmacs": info.reference_gmacs,
        "reference_source": info.reference_source,
    }


def markdown_table(rows: list[dict]) -> str:
    """The model table of docs/models.md."""
    lines = [
        "| model | params | reference params | GMACs | reference GMACs | XLA GFLOPs | size"
        " | source |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ref_gmacs = f"{r['reference_gmacs']:.3f}" if r["reference_gmacs"] else "-"
        gflops = f"{r['gflops']:.2f}" if r["gflops"] is not None else "-"
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['reference_params'] or 0:,} | "
            f"{r['gmacs']:.3f} | {ref_gmacs} | {gflops} | {r['image_size']} | "
            f"{r['reference_source']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument("--models", nargs="*", help="only these models (default: all)")
    parser.add_argument("--no-xla", action="store_true", help="skip XLA's cost analysis")
    args = parser.parse_args(argv)
    names = args.models or registry.list_models()
    try:
        for name in names:
            registry.model_info(name)  # unknown names fail before any tracing
    except ValueError as error:
        print(f"summary: error: {first_line(error)}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    rows = [summarize(n, with_xla=not args.no_xla) for n in names]
    print(json.dumps(rows, indent=1) if args.json else markdown_table(rows))
    return ExitCode.COMPLETE


if __name__ == "__main__":
    sys.exit(main())
