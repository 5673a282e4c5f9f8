"""Model hyperparameters and the values derived from them (docs/science.md)."""

import dataclasses

DTYPES = ("bfloat16", "float32")
REMAT_POLICIES = ("none", "full", "dots")
PARAMETRIZATIONS = ("completep", "standard")
WEIGHT_SCALINGS = ("none", "fan_in", "fan_out")  # or a number, written as a string ("0.5")
ATTENTION_IMPLEMENTATIONS = ("dense", "blockwise", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Dimensions: V vocab, L layers, D width, H heads of K = D / H, F = mlp_ratio·D, S seq_len.

    parametrization "completep" is the model of the study; "standard" (one init scale 0.02, no
    residual or output multipliers) exists only as the control of the coordinate check.

    The switches from `resid_scale` on are the forward-pass options of the study's released
    checkpoint format; their defaults are the model we train. `weight_scaling` multiplies the
    matmul output of every q/k/v/o/up/down projection (before its bias) by in_features^−½
    ("fan_in"), out_features^−½ ("fan_out"), a number, or nothing ("none").
    """

    vocab_size: int
    num_layers: int
    d_model: int
    num_heads: int = 0  # 0: derive from the head_dim rule (64 for D ≤ 1024, else 128)
    seq_len: int = 2048  # longest sequence the model is used with; RoPE needs no table
    mlp_ratio: int = 4
    rope_theta: float = 1e4
    attn_softcap: float = 30.0
    dtype: str = "bfloat16"  # activations and matmuls; norms and softmax are always float32
    param_dtype: str = "float32"  # master weights
    remat: str = "full"  # "none", "full" (recompute each layer) or "dots" (keep weight matmuls)
    causal: bool = False  # autoregressive baseline
    parametrization: str = "completep"
    head_dim_override: int = 0  # 0: D / heads; else q/k/v have heads·head_dim_override features
    resid_scale: float = 4.0  # CompleteP branch multiplier resid_scale / L
    head_scaling: float = 0.0  # multiplier of the head's output; 0: 512 / D (CompleteP)
    weight_scaling: str = "none"
    mlp_bias: bool = True
    attention_sink: bool = True  # the learned per-head key/value sink
    qk_norm: bool = True
    norm_eps: float = 1e-6
    attention: str = "dense"  # implementation of the attention core (dlmjax.model.attention)

    def __post_init__(self):
        for key in ("vocab_size", "num_layers", "d_model", "seq_len", "mlp_ratio"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be positive, got {getattr(self, key)}")
        if self.num_heads < 0:
            raise ValueError(f"model.num_heads must be >= 0 (0 derives it), got {self.num_heads}")
        if not self.num_heads and self.d_model % self._default_head_dim():
            raise ValueError(f"model.d_model={self.d_model} is not a multiple of the default "
                             f"head_dim {self._default_head_dim()}; set model.num_heads")
        if self.head_dim_override < 0:
            raise ValueError(f"model.head_dim must be >= 0 (0 derives it), got "
                             f"{self.head_dim_override}")
        if not self.head_dim_override and self.d_model % self.heads:
            raise ValueError(f"model.num_heads={self.num_heads} does not divide "
                             f"d_model={self.d_model}")
        if self.head_dim % 2:
            raise ValueError(f"model.num_heads: head_dim {self.head_dim} must be even for RoPE")
        for key, allowed in (("dtype", DTYPES), ("param_dtype", DTYPES),
                             ("remat", REMAT_POLICIES), ("parametrization", PARAMETRIZATIONS),
                             ("attention", ATTENTION_IMPLEMENTATIONS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"model.{key}={getattr(self, key)!r}; expected one of {allowed}")
        for key in ("attn_softcap", "resid_scale", "norm_eps", "rope_theta"):
            if not getattr(self, key) > 0:
                raise ValueError(f"model.{key} must be positive, got {getattr(self, key)}")
        if not self.head_scaling >= 0:
            raise ValueError(f"model.head_scaling must be >= 0 (0 = 512/D), got "
                             f"{self.head_scaling}")
        if self.weight_scaling not in WEIGHT_SCALINGS:
            try:
                number = float(self.weight_scaling)
            except ValueError:
                number = float("nan")
            if not number > 0:
                raise ValueError(f"model.weight_scaling={self.weight_scaling!r}; expected one of "
                                 f"{WEIGHT_SCALINGS} or a positive number")

    def _default_head_dim(self) -> int:
        return 64 if self.d_model <= 1024 else 128

    @property
    def heads(self) -> int:
        return self.num_heads or self.d_model // self._default_head_dim()

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.d_model // self.heads

    def projection_scale(self, fan_in: int, fan_out: int) -> float:
        """The `weight_scaling` multiplier of a projection's matmul output."""
        if self.weight_scaling == "none":
            return 1.0
        if self.weight_scaling == "fan_in":
            return fan_in**-0.5
        if self.weight_scaling == "fan_out":
            return fan_out**-0.5
        return float(self.weight_scaling)

    @property
    def mlp_dim(self) -> int:
        return self.mlp_ratio * self.d_model

    @property
    def completep(self) -> bool:
        return self.parametrization == "completep"

    @property
    def residual_multiplier(self) -> float:
        """CompleteP's depth scaling of every residual branch (resid_scale / L, 4/L)."""
        return self.resid_scale / self.num_layers if self.completep else 1.0

    @property
    def logit_multiplier(self) -> float:
        """μP output multiplier 512/D on the (zero-initialised) head, or head_scaling."""
        if self.head_scaling:
            return self.head_scaling
        return 512.0 / self.d_model if self.completep else 1.0

    @property
    def matrix_init_std(self) -> float:
        return 0.4 / self.d_model**0.5 if self.completep else 0.02

    @property
    def embed_init_std(self) -> float:
        return 0.02

    @property
    def head_init_std(self) -> float:
        return 0.0 if self.completep else 0.02

    @property
    def sink_params(self) -> int:
        """Learned key and value sink per head: 2·H·K (= 2·D) per layer."""
        return self.num_layers * 2 * self.heads * self.head_dim if self.attention_sink else 0
