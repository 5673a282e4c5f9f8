"""The transformer and its CompleteP parametrization."""

from dlmjax.model.attention import NoisyMask
from dlmjax.model.config import ModelConfig
from dlmjax.model.transformer import (
    Transformer,
    abstract_params,
    apply,
    apply_with_layer_outputs,
    head_kernel,
    init_params,
    logical_axes,
)

__all__ = [
    "ModelConfig",
    "NoisyMask",
    "Transformer",
    "abstract_params",
    "apply",
    "apply_with_layer_outputs",
    "head_kernel",
    "init_params",
    "logical_axes",
]
