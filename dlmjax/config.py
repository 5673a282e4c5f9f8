"""One place that validates an experiment config and derives everything computed from it.

`derive(config)` is called once, before anything is compiled; every error names the config key.
Scalar checks (types, finite floats, ranges, enums) live in dlmjax/validate.py; derive adds the
structural ones that need the device count.
"""

import dataclasses
import math

from ml_collections import ConfigDict

from dlmjax import optim, trackers, validate
from dlmjax.diffusion import NOISE_SHIFTS
from dlmjax.errors import ConfigError  # public here too: raised by derive
from dlmjax.model import ModelConfig
from dlmjax.scaling import flops

OBJECTIVES = ("diffusion", "autoregressive")
AGGREGATIONS = ("sum", "mean")
MASK_ID = 3  # special ids of every dlmjax tokenizer: BOS 0, EOS 1, PAD 2, MASK 3




@dataclasses.dataclass(frozen=True)
class Run:
    """Derived, validated view of a config: what the trainer, describe and eval consume."""

    config: ConfigDict
    model: ModelConfig
    optimizer: optim.OptimizerHParams
    shift: float
    steps: int
    batch_size: int  # global sequences per optimizer step
    microbatches: int
    mesh_shape: dict  # axis name → size, with −1 resolved against num_devices
    flops_per_token: float  # non-embedding, "deepseek" convention
    flops_per_token_6p: float

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.model.seq_len

    @property
    def total_tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def data_parallel(self) -> int:
        return self.mesh_shape["data"] * self.mesh_shape["fsdp"]


def _require(condition, key, message):
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _resolve_mesh(mesh_cfg, num_devices):
    sizes = {axis: int(mesh_cfg[axis]) for axis in ("data", "fsdp", "tensor")}
    for axis, size in sizes.items():
        _require(size == -1 or size >= 1, f"mesh.{axis}", f"must be >= 1 or -1, got {size}")
    fill = [axis for axis, size in sizes.items() if size == -1]
    _require(len(fill) <= 1, "mesh", f"only one axis may be -1, got {fill}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        _require(num_devices % fixed == 0, f"mesh.{fill[0]}",
                 f"cannot fill {num_devices} devices when the other axes multiply to {fixed}")
        sizes[fill[0]] = num_devices // fixed
    _require(math.prod(sizes.values()) == num_devices, "mesh",
             f"sizes {sizes} use {math.prod(sizes.values())} devices, but {num_devices} exist")
    return sizes


def derive(config: ConfigDict, num_devices: int) -> Run:
    c = config
    validate.check_values(c)
    _require(c.objective in OBJECTIVES, "objective", f"{c.objective!r} is not one of {OBJECTIVES}")
    _require(c.noise.type in NOISE_SHIFTS, "noise.type",
             f"unknown noise type {c.noise.type!r}; expected one of {sorted(NOISE_SHIFTS)}")
    _require(c.noise.loss_aggregation in AGGREGATIONS, "noise.loss_aggregation",
             f"{c.noise.loss_aggregation!r} is not one of {AGGREGATIONS}")
    for key in ("per_token_fraction", "prompt_fraction"):
        value = c.noise[key]
        _require(0.0 <= value <= 1.0, f"noise.{key}", f"must be in [0, 1], got {value}")
    _require(c.noise.chunk_size >= 1, "noise.chunk_size", f"must be >= 1, got {c.noise.chunk_size}")
    _require(c.model.vocab_size > MASK_ID, "model.vocab_size",
             f"must exceed the mask id {MASK_ID}, got {c.model.vocab_size}")
    try:
        model = ModelConfig(
            vocab_size=c.model.vocab_size, num_layers=c.model.num_layers,
            d_model=c.model.d_model, num_heads=c.model.num_heads, seq_len=c.model.seq_len,
            dtype=c.model.dtype, param_dtype=c.model.param_dtype, remat=c.model.remat,
            causal=c.objective == "autoregressive", attention=c.model.attention,
            head_dim_override=c.model.head_dim, resid_scale=c.model.resid_scale,
            head_scaling=c.model.head_scaling, weight_scaling=str(c.model.weight_scaling),
            mlp_bias=c.model.mlp_bias, attention_sink=c.model.attention_sink,
            qk_norm=c.model.qk_norm, attn_softcap=c.model.attn_softcap,
            rope_theta=c.model.rope_theta, norm_eps=c.model.norm_eps)
    except ValueError as e:  # ModelConfig names the model.* key already
        raise ConfigError(str(e)) from None

    batch, micro = c.train.batch_size, c.train.microbatches
    _require(batch >= 1, "train.batch_size", f"must be >= 1, got {batch}")
    _require(micro >= 1 and batch % micro == 0, "train.microbatches",
             f"{micro} does not divide train.batch_size={batch}")
    mesh_shape = _resolve_mesh(c.mesh, num_devices)
    dp = mesh_shape["data"] * mesh_shape["fsdp"]
    _require((batch // micro) % dp == 0, "train.batch_size",
             f"the micro-batch of {batch // micro} sequences (batch_size {batch} / microbatches "
             f"{micro}) is not divisible by the data-parallel size {dp} (mesh.data × mesh.fsdp)")
    _require(c.mesh.strategy in ("dp", "fsdp", "fsdp_tp"), "mesh.strategy",
             f"{c.mesh.strategy!r} is not one of ('dp', 'fsdp', 'fsdp_tp')")
    if mesh_shape["tensor"] > 1:
        _require(c.mesh.strategy == "fsdp_tp", "mesh.tensor",
                 f"tensor={mesh_shape['tensor']} needs mesh.strategy='fsdp_tp'")
        _require(model.heads % mesh_shape["tensor"] == 0, "mesh.tensor",
                 f"{mesh_shape['tensor']} does not divide the {model.heads} heads")

    tokens_per_step = batch * c.model.seq_len
    steps = c.train.steps or c.train.tokens // tokens_per_step
    _require(steps >= 1, "train.steps",
             f"no steps to run: set train.steps or train.tokens (>= {tokens_per_step} tokens)")
    trackers.check_config(c.train)
    for key in ("log_every", "checkpoint_every", "keep_checkpoints", "eval_batches"):
        _require(c.train[key] >= 1, f"train.{key}", f"must be >= 1, got {c.train[key]}")
    _require(c.train.eval_every >= 0, "train.eval_every", f"must be >= 0, got {c.train.eval_every}")
    _require(0.0 <= c.optim.cooldown_fraction <= 1.0, "optim.cooldown_fraction",
             f"must be in [0, 1], got {c.optim.cooldown_fraction}")
    _require(c.optim.warmup_steps >= 0, "optim.warmup_steps",
             f"must be >= 0, got {c.optim.warmup_steps}")
    try:
        hparams = optim.derive_hparams(
            lr=c.optim.lr, d_model=model.d_model, num_layers=model.num_layers,
            total_steps=steps, warmup_steps=c.optim.warmup_steps,
            cooldown_fraction=c.optim.cooldown_fraction, batch_size=batch, b1=c.optim.b1,
            b2=c.optim.b2 or None, weight_decay=c.optim.weight_decay, clip_norm=c.optim.clip_norm)
    except ValueError as e:
        raise ConfigError(f"optim: {e}") from None

    return Run(config=c, model=model, optimizer=hparams, shift=NOISE_SHIFTS[c.noise.type],
               steps=steps, batch_size=batch, microbatches=micro, mesh_shape=mesh_shape,
               flops_per_token=flops.flops_per_token(model.num_layers, model.d_model,
                                                     model.seq_len, "deepseek"),
               flops_per_token_6p=flops.flops_per_token(model.num_layers, model.d_model,
                                                        model.seq_len, "6p"))
