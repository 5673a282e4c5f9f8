"""config.json of the released checkpoint format, both ways (docs/interop.md).

The study's models are HuggingFace repositories with `model_type: "gidd"`. Every key of their
config class that changes the forward pass maps to one `model.*` or `noise.*` key of ours; a
key that is missing takes the class default (what the remote code would use), a known key we
cannot honour is refused, and a key we do not know is refused too, naming it: silently
ignoring it could change the model without anyone noticing.
"""

import math

from dlmjax.diffusion import NOISE_SHIFTS
from dlmjax.diffusion.schedule import LOG_SNR_MAX, LOG_SNR_MIN
from dlmjax.model import ModelConfig

MODEL_TYPE = "gidd"
ARCHITECTURE = "GiddForDiffusionLM"
# Where the study's remote code lives; export points auto_map at it ("repo--module.Class").
DEFAULT_REMOTE_CODE_REPO = "dvruette/gidd-unif-3b"
SPECIAL_IDS = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2, "mask_token_id": 3}

# The released config class's defaults for every key that changes the forward (or the diffusion
# around it). A config.json that omits a key gets this value from the remote code, so we do too.
FORWARD_DEFAULTS = {
    "vocab_size": 131072,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "head_dim": None,  # None = hidden_size / num_attention_heads
    "is_causal": False,
    "attn_soft_cap": 30.0,
    "max_position_embeddings": 1024,
    "resid_scale": 4.0,
    "rms_norm_eps": 1e-6,
    "use_qk_norm": True,
    "weight_scaling": "fan_in",
    "head_scaling": 1.0,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "noise_type": 0.0,
    "min_log_snr": LOG_SNR_MIN,
    "max_log_snr": LOG_SNR_MAX,
    **SPECIAL_IDS,
}

# Keys that do not change what the network computes, each with the reason.
HARMLESS_KEYS = {
    "architectures": "names the PyTorch class",
    "auto_map": "where the remote code lives",
    "model_type": "checked to be 'gidd'",
    "torch_dtype": "storage precision; every tensor records its own dtype",
    "dtype": "storage precision (newer transformers)",
    "transformers_version": "provenance",
    "_name_or_path": "provenance",
    "_attn_implementation_autoset": "transformers bookkeeping",
    "attn_performer": "'eager' and 'flex' compute the same attention",
    "init_scale": "initialisation only",
    "emb_init_scale": "initialisation only",
    "head_init_scale": "initialisation only",
    "initializer_range": "initialisation only",
    "use_cache": "KV-cache switch of generate()",
    "return_dict": "output container",
    "output_hidden_states": "extra outputs",
    "output_attentions": "extra outputs",
    "torchscript": "PyTorch export switch",
    "pruned_heads": "must be empty (checked)",
    "chunk_size_feed_forward": "must be 0 (checked)",
    "id2label": "classification heads only",
    "label2id": "classification heads only",
    "problem_type": "classification heads only",
    "tokenizer_class": "tokenizer bookkeeping",
    "prefix": "text-generation pipeline bookkeeping",
    "task_specific_params": "pipeline bookkeeping",
    "finetuning_task": "provenance",
    "gradient_checkpointing": "training memory only",
    "scan_layers": "training layout only",
}


class FormatError(ValueError):
    """A config.json (or state dict) we cannot import faithfully; the message names the key."""


def _number(value, key, *, positive=True):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FormatError(f"config.json: {key}={value!r} is not a finite number")
    if positive and value <= 0:
        raise FormatError(f"config.json: {key}={value!r} must be positive")
    return value


def _integer(value, key):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FormatError(f"config.json: {key}={value!r} must be a positive integer")
    return value


def _boolean(value, key):
    if not isinstance(value, bool):
        raise FormatError(f"config.json: {key}={value!r} must be true or false")
    return value


def noise_type_name(shift, key="noise_type"):
    """Our noise.type for the mixing shift b. |b| ≥ 30 is pure masking / pure uniform noise to
    within e^−21 at every λ in [−9, 9], so it maps onto the shifts ∓1000 of ours."""
    shift = _number(shift, key, positive=False)
    if shift <= -30:
        return "masked"
    if shift >= 30:
        return "uniform"
    for name, value in NOISE_SHIFTS.items():
        if shift == value:
            return name
    raise FormatError(f"config.json: {key}={shift!r} is not a supported mixing shift; "
                      f"dlmjax has {sorted(NOISE_SHIFTS.values())} (names {sorted(NOISE_SHIFTS)}); "
                      f"|shift| >= 30 counts as pure masking / uniform noise")


def weight_scaling_value(value, key="weight_scaling"):
    """Our model.weight_scaling string for the released `weight_scaling` value."""
    if value in ("fan_in", "fan_out"):
        return value
    number = _number(value, key)
    return "none" if number == 1.0 else repr(float(number))


def head_scaling_value(value, d_model, vocab_size, key="head_scaling"):
    """The head's output multiplier as a number (the released head is a scaled linear layer)."""
    if value == "fan_in":
        return d_model**-0.5
    if value == "fan_out":
        return vocab_size**-0.5
    return float(_number(value, key))


def _check_keys(hf_config, where):
    if hf_config.get("model_type") != MODEL_TYPE:
        raise FormatError(f"{where}: model_type={hf_config.get('model_type')!r}; only "
                          f"{MODEL_TYPE!r} checkpoints can be imported")
    unknown = sorted(set(hf_config) - set(FORWARD_DEFAULTS) - set(HARMLESS_KEYS))
    if unknown:
        raise FormatError(f"{where}: unknown key(s) {unknown}: they may change the forward pass, "
                          f"so the import refuses them (known keys: {sorted(FORWARD_DEFAULTS)}; "
                          f"ignored as harmless: {sorted(HARMLESS_KEYS)})")
    if hf_config.get("pruned_heads"):
        raise FormatError(f"{where}: pruned_heads={hf_config['pruned_heads']!r} is not supported")
    if hf_config.get("chunk_size_feed_forward", 0):
        raise FormatError(f"{where}: chunk_size_feed_forward must be 0")


def experiment_overrides(hf_config: dict, where="config.json"):
    """(overrides, defaulted): dotted dlmjax config keys → values, and the keys that took the
    released class's default because config.json did not set them."""
    _check_keys(hf_config, where)
    defaulted = sorted(k for k in FORWARD_DEFAULTS if k not in hf_config)
    c = {**FORWARD_DEFAULTS, **hf_config}
    vocab = _integer(c["vocab_size"], "vocab_size")
    d_model = _integer(c["hidden_size"], "hidden_size")
    layers = _integer(c["num_hidden_layers"], "num_hidden_layers")
    heads = _integer(c["num_attention_heads"], "num_attention_heads")
    head_dim = d_model // heads if c["head_dim"] is None else _integer(c["head_dim"], "head_dim")
    # The released attention uses hidden_size / head_dim heads and D-wide QK-norm gains.
    if heads * head_dim != d_model:
        raise FormatError(f"{where}: num_attention_heads={heads} × head_dim={head_dim} must equal "
                          f"hidden_size={d_model} (the format's q/k norms are hidden_size wide)")
    if _integer(c["intermediate_size"], "intermediate_size") != 4 * d_model:
        raise FormatError(f"{where}: intermediate_size={c['intermediate_size']} is not "
                          f"4 × hidden_size={4 * d_model}; dlmjax's MLP is 4·D wide")
    if _boolean(c["is_causal"], "is_causal"):
        raise FormatError(f"{where}: is_causal=true: only bidirectional diffusion models import")
    if c["rope_scaling"] is not None:
        raise FormatError(f"{where}: rope_scaling={c['rope_scaling']!r} is not supported "
                          f"(plain RoPE only)")
    if c["attn_soft_cap"] is None:
        raise FormatError(f"{where}: attn_soft_cap=null (no cap) is not supported")
    for key, want in (("min_log_snr", LOG_SNR_MIN), ("max_log_snr", LOG_SNR_MAX)):
        if _number(c[key], key, positive=False) != want:
            raise FormatError(f"{where}: {key}={c[key]!r}; dlmjax's λ range is "
                              f"[{LOG_SNR_MIN}, {LOG_SNR_MAX}]")
    for key, want in SPECIAL_IDS.items():
        if c[key] != want:
            raise FormatError(f"{where}: {key}={c[key]!r}; dlmjax needs {want} (BOS 0, EOS 1, "
                              f"PAD 2, MASK 3)")
    tied = _boolean(c["tie_word_embeddings"], "tie_word_embeddings")
    overrides = {
        "model.vocab_size": vocab,
        "model.num_layers": layers,
        "model.d_model": d_model,
        "model.num_heads": heads,
        "model.head_dim": 0,
        "model.seq_len": _integer(c["max_position_embeddings"], "max_position_embeddings"),
        "model.resid_scale": float(_number(c["resid_scale"], "resid_scale")),
        # Tied checkpoints compute h·Eᵀ without the head's scale in the released code.
        "model.head_scaling": 1.0 if tied else head_scaling_value(c["head_scaling"], d_model,
                                                                  vocab),
        "model.weight_scaling": weight_scaling_value(c["weight_scaling"]),
        "model.mlp_bias": _boolean(c["mlp_bias"], "mlp_bias"),
        "model.attention_sink": _boolean(c["attention_bias"], "attention_bias"),
        "model.qk_norm": _boolean(c["use_qk_norm"], "use_qk_norm"),
        "model.attn_softcap": float(_number(c["attn_soft_cap"], "attn_soft_cap")),
        "model.rope_theta": float(_number(c["rope_theta"], "rope_theta")),
        "model.norm_eps": float(_number(c["rms_norm_eps"], "rms_norm_eps")),
        "noise.type": noise_type_name(c["noise_type"]),
        "noise.scale": 1.0,
    }
    return overrides, defaulted, tied


def check_exportable(model: ModelConfig, *, objective, noise_scale):
    """Raises FormatError naming the setting the released format cannot express."""
    if objective != "diffusion":
        raise FormatError(f"objective={objective!r}: only diffusion models can be exported "
                          f"(the released attention has no causal mask)")
    if model.heads * model.head_dim != model.d_model:
        raise FormatError(f"model.head_dim: heads {model.heads} × head_dim {model.head_dim} != "
                          f"d_model {model.d_model}; the format needs H·K = D")
    if noise_scale != 1.0:
        raise FormatError(f"noise.scale={noise_scale}: the format's mixing schedule has scale 1")


def hf_config(model: ModelConfig, *, shift, torch_dtype="float32",
              remote_code_repo=DEFAULT_REMOTE_CODE_REPO):
    """config.json for `model`: every forward key of the format, written explicitly."""
    prefix = f"{remote_code_repo}--" if remote_code_repo else ""
    if model.weight_scaling in ("fan_in", "fan_out"):
        weight_scaling = model.weight_scaling
    else:
        weight_scaling = model.projection_scale(1, 1)
    return {
        "architectures": [ARCHITECTURE],
        "auto_map": {"AutoConfig": f"{prefix}configuration_gidd.GiddConfig",
                     "AutoModel": f"{prefix}modeling_gidd.GiddModel",
                     "AutoModelForCausalLM": f"{prefix}modeling_gidd.{ARCHITECTURE}"},
        "model_type": MODEL_TYPE,
        "torch_dtype": torch_dtype,
        "vocab_size": model.vocab_size,
        "hidden_size": model.d_model,
        "intermediate_size": model.mlp_dim,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.heads,
        "head_dim": model.head_dim,
        "is_causal": False,
        "attn_soft_cap": model.attn_softcap,
        "max_position_embeddings": model.seq_len,
        "resid_scale": model.residual_multiplier * model.num_layers,
        "rms_norm_eps": model.norm_eps,
        "use_qk_norm": model.qk_norm,
        "weight_scaling": weight_scaling,
        "head_scaling": model.logit_multiplier,
        "rope_theta": model.rope_theta,
        "rope_scaling": None,
        "attention_bias": model.attention_sink,
        "mlp_bias": model.mlp_bias,
        "tie_word_embeddings": False,
        "attn_performer": "eager",
        "noise_type": float(shift),
        "min_log_snr": LOG_SNR_MIN,
        "max_log_snr": LOG_SNR_MAX,
        **SPECIAL_IDS,
    }
