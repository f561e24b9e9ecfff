"""archs: landmark image-classification networks as faithful, composable Flax NNX modules.

`create_model(name)`, `list_models()` and `model_info(name)` are the registry; importing this
package registers every family. `load_pretrained` imports torchvision/timm weights;
`archs.model_state` reads and writes a model's variables on disk; `create_model(name,
conv=archs.fast_conv.for_backend(jax.default_backend()))` builds a model with the CPU's faster
convolution gradients (`archs.convolution`).
"""

from archs import alexnet, densenet, googlenet, inception_resnet, resnet, vgg  # noqa: F401
from archs.registry import ModelInfo, create_model, list_models, model_info, model_overrides

__all__ = [
    "ModelInfo",
    "create_model",
    "list_models",
    "load_pretrained",
    "model_info",
    "model_overrides",
]


def __getattr__(name: str):
    # convert.py needs the checkpoint readers; import it only when asked for.
    if name == "load_pretrained":
        from archs.convert import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'archs' has no attribute {name!r}")
