"""Global-norm gradient clipping (`grad_clip_norm`) around any optax optimizer.

The clip runs first in the chain, on the gradient the train step hands to the optimizer: once
per optimizer step, on the average of the micro-batches' gradients under gradient accumulation,
and before SGD's coupled weight decay is added (as timm clips `param.grad` before
`optimizer.step()`, where PyTorch's SGD adds the decay).
"""

from __future__ import annotations

import optax


def clipped(tx: optax.GradientTransformation, max_norm: float) -> optax.GradientTransformation:
    """`tx` behind `optax.clip_by_global_norm(max_norm)`; `tx` itself when max_norm is 0."""
    if max_norm <= 0:
        return tx
    return optax.chain(optax.clip_by_global_norm(max_norm), tx)
