"""Model hyperparameters and the values derived from them (DESIGN.md §2)."""

import dataclasses

DTYPES = ("bfloat16", "float32")
REMAT_POLICIES = ("none", "full", "dots")
PARAMETRIZATIONS = ("completep", "standard")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Dimensions: V vocab, L layers, D width, H heads of K = D / H, F = mlp_ratio·D, S seq_len.

    parametrization "completep" is the model of the study; "standard" (one init scale 0.02, no
    residual or output multipliers) exists only as the control of the coordinate check.
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

    def __post_init__(self):
        for key in ("vocab_size", "num_layers", "d_model", "seq_len", "mlp_ratio"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be positive, got {getattr(self, key)}")
        if self.num_heads < 0:
            raise ValueError(f"model.num_heads must be >= 0 (0 derives it), got {self.num_heads}")
        if not self.num_heads and self.d_model % self._default_head_dim():
            raise ValueError(f"model.d_model={self.d_model} is not a multiple of the default "
                             f"head_dim {self._default_head_dim()}; set model.num_heads")
        if self.d_model % self.heads:
            raise ValueError(f"model.num_heads={self.num_heads} does not divide "
                             f"d_model={self.d_model}")
        if self.head_dim % 2:
            raise ValueError(f"model.num_heads: head_dim {self.head_dim} must be even for RoPE")
        for key, allowed in (("dtype", DTYPES), ("param_dtype", DTYPES),
                             ("remat", REMAT_POLICIES), ("parametrization", PARAMETRIZATIONS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"model.{key}={getattr(self, key)!r}; expected one of {allowed}")
        if self.attn_softcap <= 0:
            raise ValueError(f"model.attn_softcap must be positive, got {self.attn_softcap}")

    def _default_head_dim(self) -> int:
        return 64 if self.d_model <= 1024 else 128

    @property
    def heads(self) -> int:
        return self.num_heads or self.d_model // self._default_head_dim()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def mlp_dim(self) -> int:
        return self.mlp_ratio * self.d_model

    @property
    def completep(self) -> bool:
        return self.parametrization == "completep"

    @property
    def residual_multiplier(self) -> float:
        """CompleteP's depth scaling of every residual branch (4/L)."""
        return 4.0 / self.num_layers if self.completep else 1.0

    @property
    def logit_multiplier(self) -> float:
        """μP output multiplier 512/D on the (zero-initialised) head."""
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
        """Learned key and value sink per head: 2·H·K = 2·D per layer."""
        return self.num_layers * 2 * self.d_model
