"""The base class every network derives from: the calling contract of `docs/design.md` in one
place.

A family implements `forward_features(x) -> dict` (named activations in order, ending with
`pre_logits`), `head(pre_logits) -> logits` and, if it has auxiliary classifiers,
`aux_logits(features) -> tuple`. The base class validates input, switches aux heads on only in
training mode, and gives `model(x)`, `model(x, return_aux=True)` and `model.features(x)`.
"""

from __future__ import annotations

import jax
from flax import nnx

Array = jax.Array


class Classifier(nnx.Module):
    """An image classifier on NHWC float input; `train()`/`eval()` switch BatchNorm and dropout."""

    in_channels: int = 3
    # Set by nnx's Module.train()/eval() alongside Dropout's flag of the same name.
    deterministic: bool = False

    def forward_features(self, x: Array) -> dict[str, Array]:
        raise NotImplementedError

    def head(self, pre_logits: Array) -> Array:
        raise NotImplementedError

    def aux_logits(self, features: dict[str, Array]) -> tuple[Array, ...]:
        """Auxiliary classifier outputs from intermediate features; none by default."""
        del features
        return ()

    def check_input(self, x: Array) -> None:
        """Refuse anything but a (N, H, W, in_channels) array, saying what was expected."""
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 4 or shape[-1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects NHWC input of shape (N, H, W, {self.in_channels}),"
                f" got shape {shape}"
            )

    def features(self, x: Array) -> dict[str, Array]:
        """Named intermediate activations: `stem`, `stage1`, ..., `pre_logits`."""
        self.check_input(x)
        return self.forward_features(x)

    def __call__(self, x: Array, return_aux: bool = False) -> Array | tuple[Array, tuple]:
        feats = self.features(x)
        logits = self.head(feats["pre_logits"])
        if not return_aux:
            return logits
        aux = () if self.deterministic else self.aux_logits(feats)
        return logits, aux
